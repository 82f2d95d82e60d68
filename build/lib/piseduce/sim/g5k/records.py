"""The emulated site's records: its nodes, OAR jobs and Kadeploy deployments (with the times their
states derive from), the fault knobs tests steer, and the API error the routes answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ACTIVE_JOB_STATES = ("waiting", "launching", "running")
FINAL_JOB_STATES = ("terminated", "error")

# Seconds at time scale 1, roughly what Grid'5000 takes.
LAUNCH_SECONDS = 8.0  # OAR: start of a deploy job (prologue) until `running`
KILL_SECONDS = 3.0  # OAR: oardel until the job is `error`
KADEPLOY_WAIT_SECONDS = 2.0
KADEPLOY_SECONDS = 240.0  # a whole Kadeploy run (reboot, image, reboot)

KO_STEP = {"macro": "SetDeploymentEnvUntrusted", "micro": "wait_reboot", "state": "KO"}


class SimError(Exception):
    """An API error: HTTP status and the text the real API would answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Faults:
    ko_rate: float = 0.0  # probability that a node of a deployment ends KO
    ko_nodes: set[str] = field(default_factory=set)  # nodes (uid or FQDN) that always end KO
    error_rate: float = 0.0  # probability that an API request answers 503
    fail_next: int = 0  # the next N API requests answer 503
    drop_next: int = 0  # the next N API requests are processed, but their answer is lost (502)
    latency: float = 0.0  # seconds added to every API request
    deploy_error: str = ""  # when set, deployments end in `error` with this output

    def as_dict(self) -> dict[str, Any]:
        return {
            "ko_rate": self.ko_rate,
            "ko_nodes": sorted(self.ko_nodes),
            "error_rate": self.error_rate,
            "fail_next": self.fail_next,
            "drop_next": self.drop_next,
            "latency": self.latency,
            "deploy_error": self.deploy_error,
        }

    def update(self, data: dict[str, Any]) -> None:
        for key, value in data.items():
            if key == "ko_nodes":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise SimError(400, "ko_nodes must be a list of node names")
                self.ko_nodes = set(value)
            elif key in ("ko_rate", "error_rate"):
                v = float(value)
                if not 0 <= v <= 1:
                    raise SimError(400, f"{key} must be between 0 and 1")
                setattr(self, key, v)
            elif key == "latency":
                v = float(value)
                if not 0 <= v <= 60:
                    raise SimError(400, "latency must be between 0 and 60 seconds")
                self.latency = v
            elif key in ("fail_next", "drop_next"):
                n = int(value)
                if n < 0:
                    raise SimError(400, f"{key} must be >= 0")
                setattr(self, key, n)
            elif key == "deploy_error":
                self.deploy_error = str(value or "")
            else:
                raise SimError(400, f"unknown fault {key!r}")


@dataclass
class SimNode:
    uid: str
    cluster: str
    fqdn: str
    ref: dict[str, Any]
    hard: str = "alive"

    def oar_properties(self) -> dict[str, object]:
        arch = self.ref["architecture"]
        jt = self.ref["supported_job_types"]
        return {
            "host": self.fqdn,
            "network_address": self.fqdn,
            "cluster": self.cluster,
            "type": "default",
            "deploy": "YES" if jt.get("deploy") else "NO",
            "cpucore": float(arch["nb_cores"]),
            "core_count": float(arch["nb_cores"]),
            "thread_count": float(arch["nb_threads"]),
            "memnode": float(self.ref["main_memory"]["ram_size"] // (1024 * 1024)),
            "cputype": f"{self.ref['processor']['model']} {self.ref['processor'].get('version', '')}".strip(),
            "cpuarch": arch["platform_type"],
            "cpufreq": round(float(self.ref["processor"].get("clock_speed", 0)) / 1e9, 1),
            "core": float(arch["nb_cores"]),
            "gpu_count": float(len(self.ref.get("gpu_devices", {}))),
            "nodemodel": self.ref["chassis"]["name"],
            "besteffort": "YES" if jt.get("besteffort") else "NO",
            "state": self.hard.capitalize(),
        }


@dataclass
class SimJob:
    uid: int
    user: str
    name: str
    command: str
    types: list[str]
    properties: str
    queue: str
    project: str
    hosts: list[str]
    walltime: int
    submitted_at: float
    start_at: float  # when OAR starts it (the prediction, exact for a reservation)
    reservation: bool
    message: str
    directory: str = ""
    deleted_at: float | None = None
    granted: int = 0  # seconds granted by walltime changes
    cores: dict[str, int] = field(default_factory=dict)  # host FQDN → cores held there
    preempted_at: float | None = None  # a besteffort job killed for another one (its uid)
    preempted_by: int | None = None
    pending: int = 0  # seconds of a walltime increase OAR has not granted yet
    types_of_change: dict[str, bool] = field(default_factory=dict)  # the pending change's options

    def launched_at(self, launch: float) -> float:
        return self.start_at + launch

    def natural_end(self, launch: float) -> float:
        return self.start_at + launch + self.walltime

    def killed_at(self) -> float | None:
        """When OAR began killing it: a deletion, or a besteffort job giving way."""
        times = [t for t in (self.deleted_at, self.preempted_at) if t is not None]
        return min(times) if times else None

    def stop_at(self, launch: float, kill: float) -> float:
        end = self.natural_end(launch)
        killed = self.killed_at()
        if killed is not None:
            end = min(end, killed + kill)
        return end


@dataclass
class SimDeployment:
    uid: str
    user: str
    nodes: list[str]
    environment: str
    key: str | None
    created_at: float
    ko: set[str]
    error: str
    params: dict[str, Any]
    canceled_at: float | None = None
