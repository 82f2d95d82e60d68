#!/usr/bin/env python3
"""The user guide's experiment with the Python client: reserve 4 Raspberry Pis, 2 Grid'5000
servers and 1 FIT IoT-LAB sensor for 2 hours in one all-or-nothing booking, deploy each with its
form's defaults, wait, run one command on each Pi and server over SSH (the host key its agent
pinned), read the sensor's experiment id, and give everything back.

Run it after `pisctl login URL` (or with PISEDUCE_URL and PISEDUCE_TOKEN set):
    python3 experiment.py [--hours 2] [--identity ~/.ssh/id_ed25519] [--ssh raspberry,g5k]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from piseduce.client import Client, PiseduceError, Reservation
from piseduce.client.cli.credentials import load
from piseduce.client.ssh import ssh_command

WANT = {"raspberry": 4, "g5k": 2, "iot-lab": 1}


def show(current: list[Reservation]) -> None:
    """wait_deployed's on_progress: one line per node."""
    # `progress` is the running process's (null once none runs): a deployed node is done, 100 %.
    words = ", ".join(
        f"{r.node} {r.status}" + ("" if r.progress is None else f" {round(r.progress * 100)}%")
        for r in current
    )
    print(f"  {words}", flush=True)


def run(api: Client, args: argparse.Namespace) -> None:
    picked = []
    for kind, count in WANT.items():
        free = api.free_nodes([f"type={kind}"], hours=args.hours, count=count)
        if len(free) < count:
            raise PiseduceError(f"only {len(free)} {kind} node(s) free for {args.hours} h, {count} wanted")
        picked += free
    booked = api.reserve(nodes=[(n.agent, n.name) for n in picked], hours=args.hours, bin=args.bin)
    print(f"booked {', '.join(r.key for r in booked)}")
    try:
        for r in booked:
            api.deploy(r)  # the form's defaults: the default environment, the site's firmware
        done = api.wait_deployed(booked, timeout=args.timeout, on_progress=show)
        for r in done:
            if r.type in args.ssh:
                with ssh_command(api, r.key, ["uname", "-n"], identity=args.identity) as argv:
                    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
                print(f"{r.node} ({r.type}) answers: {out.stdout.strip()}")
            elif r.type == "iot-lab" and r.connection is not None:
                print(f"{r.node} ({r.type}): IoT-LAB experiment {r.connection.details.get('experiment_id')}")
    finally:
        for r in booked:
            api.release(r)
        print(f"released {len(booked)} node(s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--bin", default="experiment")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the deployments")
    parser.add_argument("--identity", type=Path, help="your private SSH key, if not OpenSSH's default")
    parser.add_argument(
        "--ssh",
        type=lambda s: s.split(","),
        default=["raspberry", "g5k"],
        help="the kinds of nodes to log in to",
    )
    args = parser.parse_args()
    login = load()  # what `pisctl login` saved
    try:
        with Client(login.url, login.token) as api:
            run(api, args)
    except (PiseduceError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
