"""Configuration files of the agent and the web UI.

The seed's keys keep their meaning (`auth_token`, `port_number`, `node_type`, `g5k_site`,
`iot_site`, `key_file`, `db_url`, `env_path`); `comments` keys are ignored; every new key has a
safe default. Loading never raises anything but `ConfigError`, whose message is one line naming
the file and the key, so the CLI can print it and exit non-zero.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from piseduce import sshjump

log = logging.getLogger(__name__)

NodeType = Literal["raspberry", "g5k", "iot-lab"]
NODE_TYPES: tuple[str, ...] = ("raspberry", "g5k", "iot-lab")


class ConfigError(Exception):
    """A configuration problem, with a one-line message naming the file and the key."""


def _duplicate_keys_ok(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # The seed repeats "comments" several times in one object; json.loads keeps the last one,
    # which is fine for comments, but a repeated real key would silently win: refuse it.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out and key != "comments":
            raise ValueError(f"key {key!r} appears twice")
        out[key] = value
    return out


def read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = json.loads(text, object_pairs_hook=_duplicate_keys_ok)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise ConfigError(f"{path}: malformed JSON at {where}: {exc.msg}") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object")
    data.pop("comments", None)
    return data


def resolve_db_url(db_url: str, base: Path) -> str:
    """Make a relative SQLite path relative to the config file's folder."""
    prefix = "sqlite:///"
    if db_url.startswith(prefix) and not db_url.startswith("sqlite:////"):
        rel = db_url[len(prefix):]
        if rel and rel != ":memory:" and not rel.startswith("file:"):
            return prefix + str((base / rel).resolve())
    return db_url


def first_error(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return key, msg


class _Base(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=False)

    path: Path = Field(default=Path("config.json"), exclude=True)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def resolve(self, value: str | Path) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir / p).resolve()


class AgentConfig(_Base):
    auth_token: list[str]
    port_number: int = Field(default=8090, ge=1, le=65535)
    node_type: NodeType = "raspberry"
    g5k_site: str = "nancy"
    iot_site: str = "grenoble"
    key_file: str = "secret.key"
    db_url: str = "sqlite:///agent.db"
    env_path: str = "environments/"

    # New keys, all with safe defaults.
    name: str = ""
    host: str = "127.0.0.1"
    tftp_root: str = "tftpboot"
    nfs_root: str = "nfs"
    ssh_key_file: str = "agent_ssh_key"
    # The boards' network, for `piseduce agent network-config` (raspberry): the pimaster's address
    # with its prefix ("" = the /24 of the registered nodes, the pimaster at .254), its interface,
    # a dynamic DHCP range "START-END" ("" = static leases only) and a router ("" = none).
    board_address: str = ""
    board_interface: str = "eth0"
    dhcp_range: str = ""
    dhcp_router: str = ""
    # DHCP on the boards' network (raspberry): dnsmasq's lease file, where detection finds the
    # address an unknown board got from the range ("" = no DHCP: the per-port address rule), and
    # the dnsmasq file detection rewrites after it registers boards ("" = none; restart dnsmasq
    # when it changes, e.g. with a systemd path unit).
    dhcp_leases_file: str = ""
    dnsmasq_config_file: str = ""
    firmware_path: str = "firmwares/"
    # Raw copies of compressed environments for the boards' chains (raspberry, raw_cache.py):
    # the folder (its `raw/` subfolder) and the disk space its entries may take, least recently
    # used removed first (64 GB: a few Raspberry Pi OS images and one or two saved cards).
    raw_cache_path: str = "cache/"
    raw_cache_max_gb: float = Field(default=64, ge=0, le=1_000_000)
    g5k_api_url: str = "https://api.grid5000.fr/stable"
    iotlab_api_url: str = "https://www.iot-lab.info/api/"
    # The site's SSH frontend ("host[:port]"; "" = <iot_site>.iot-lab.info:22), where IoT-LAB
    # writes the consumption files an energy measure reads, and the known_hosts file that pins its
    # host key (no file: energy is not offered; the key is never accepted unseen).
    iotlab_frontend: str = ""
    iotlab_frontend_known_hosts: str = "iotlab_known_hosts"
    max_duration_hours: float = Field(default=72, gt=0, le=24 * 365)
    max_advance_days: float = Field(default=30, gt=0, le=3650)
    max_nodes_per_user: int = Field(default=64, ge=1, le=100_000)
    turnaround_minutes: float = Field(default=10, ge=0, le=24 * 60)
    # Multiplies every step timeout; the simulators run faster than real hardware.
    timeout_scale: float = Field(default=1.0, gt=0, le=100)
    poll_interval: float = Field(default=2.0, gt=0, le=60)
    max_concurrent_actions: int = Field(default=256, ge=1, le=10_000)
    # How long an executor owns an action without renewing it: after a crash, another executor
    # (or a restart) resumes the action once its lease is over.
    lease_seconds: float = Field(default=30, ge=0.5, le=3600)
    inventory_refresh_seconds: float = Field(default=300, ge=1)
    monitor_period_seconds: float = Field(default=30, ge=1)
    monitor_retention_days: float = Field(default=7, gt=0)
    # `piseduce agent gateway`: the SSH jump host to the boards (docs/admin-guide.md).
    gateway_port: int = Field(default=2222, ge=1, le=65535)
    gateway_host_key_file: str = "gateway_host_key"
    gateway_user: str = "jump"
    gateway_board_port: int = Field(default=22, ge=1, le=65535)
    gateway_max_unauthenticated: int = Field(default=32, ge=1, le=10_000)
    gateway_max_unauthenticated_per_address: int = Field(default=10, ge=1, le=10_000)
    gateway_login_grace_seconds: float = Field(default=20, gt=0, le=600)
    gateway_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    # The name users reach the gateway by from outside the lab ("" = no gateway: /api/info and
    # Manage say nothing of one), and its port there when a firewall maps another (0 = gateway_port).
    gateway_public_host: str = ""
    gateway_public_port: int = Field(default=0, ge=0, le=65535)
    # "module:Class" of a driver to use instead of the one of node_type (tests, third-party types).
    driver: str = ""
    # Grid'5000: an agent account to read the inventory when no user login comes with a request
    # (its password in a file, never in this config), and the HTTP client's limits.
    g5k_user: str = ""
    g5k_password_file: str = ""
    g5k_http_timeout: float = Field(default=30, gt=0, le=600)
    g5k_api_attempts: int = Field(default=4, ge=1, le=20)
    g5k_status_cache_seconds: float = Field(default=10, ge=0, le=3600)
    # Served without the agent token: "metrics" (/metrics), "docs" (/docs, /redoc, /openapi.json).
    # By default both need it, like every route but /api/health.
    open_endpoints: list[Literal["metrics", "docs"]] = Field(default_factory=list)

    @field_validator("auth_token", mode="before")
    @classmethod
    def _tokens(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not v:
            raise ValueError("must be a non-empty list of tokens")
        for tok in v:
            if not isinstance(tok, str) or len(tok) < 10:
                raise ValueError("every token must be a string of at least 10 characters")
        return v

    @field_validator("gateway_public_host", "gateway_user")
    @classmethod
    def _ssh_word(cls, v: str) -> str:
        # Printed unquoted in `ssh -J` lines and ~/.ssh/config blocks: one plain word.
        if v and not sshjump.HOST_RE.fullmatch(v):
            raise ValueError("must be a host name, an address or a user name: letters, digits, . _ - : only")
        return v

    @property
    def gateway_advertised_port(self) -> int:
        return self.gateway_public_port or self.gateway_port

    @field_validator("env_path", "firmware_path")
    @classmethod
    def _trailing_slash(cls, v: str) -> str:
        # The seed asks for a trailing '/'; tolerate it either way.
        return v.rstrip("/") + "/" if v else v

    @property
    def site(self) -> str:
        return {"g5k": self.g5k_site, "iot-lab": self.iot_site}.get(self.node_type, self.name or "local")

    @property
    def agent_name(self) -> str:
        return self.name or f"{self.node_type}-{self.site}"

    @property
    def key_path(self) -> Path:
        return self.resolve(self.key_file)

    @property
    def env_dir(self) -> Path:
        return self.resolve(self.env_path)

    @property
    def raw_cache_dir(self) -> Path:
        return self.resolve(self.raw_cache_path)

    @property
    def tftp_dir(self) -> Path:
        return self.resolve(self.tftp_root)

    @property
    def firmware_dir(self) -> Path:
        return self.resolve(self.firmware_path)

    @property
    def database_url(self) -> str:
        return resolve_db_url(self.db_url, self.base_dir)


class WebuiConfig(_Base):
    port_number: int = Field(default=9000, ge=1, le=65535)
    host: str = "127.0.0.1"
    db_url: str = "sqlite:///webui.db"
    key_file: str = "secret.key"
    secret_file: str = "session.secret"  # noqa: S105 (a file name, not a secret)
    agent_timeout_seconds: float = Field(default=1.5, gt=0, le=30)
    health_check_seconds: float = Field(default=15, ge=1)
    # What the web UI reads of one agent answer at most (a bigger one is an error, in words).
    agent_answer_max_bytes: int = Field(default=2 << 20, ge=64 << 10, le=256 << 20)
    # The address users open, e.g. "https://piseduce.example.org/" behind a TLS proxy; "" means
    # http://host:port_number/. Cookies are Secure when it is https, unless secure_cookies says.
    public_url: str = ""
    secure_cookies: bool | None = None
    # Believe X-Forwarded-For (the client's address, for the login limiter) only when proxy_headers
    # is on and the request comes from one of trusted_proxies (addresses or CIDR networks).
    proxy_headers: bool = False
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])
    # The login limiter (webui/throttle.py): wrong passwords allowed before waits begin, per
    # account and address, per address, and per account from browsers it was never used in.
    login_free_failures: int = Field(default=5, ge=1, le=1000)
    login_source_free_failures: int = Field(default=30, ge=1, le=100_000)
    login_account_free_failures: int = Field(default=100, ge=1, le=1_000_000)
    # Where the first admin's password is written (mode 0600) instead of the terminal or the journal.
    first_admin_file: str = "first-admin-password"
    # A database call on the event loop (a bug: it stops every request) is logged, or raised.
    event_loop_db_check: Literal["off", "warn", "raise"] = "warn"
    # Web UI processes serving host:port_number together (`piseduce webui serve --workers`).
    workers: int = Field(default=1, ge=1, le=64)
    # Days the audit trail (webui/audit.py) keeps an event; older ones are purged by the
    # housekeeping chore. 0 keeps every event.
    audit_retention_days: int = Field(default=400, ge=0, le=36_500)
    # Notifications (webui/notify/): the mail server (its password is set with `piseduce webui
    # smtp-password`, kept encrypted with the key file, never here), and how often the agents'
    # event feeds are read and the outbox is sent.
    smtp_host: str = ""  # "" = no mail is sent (webhooks still are)
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    smtp_user: str = ""
    smtp_from: str = "piseduce@localhost"
    smtp_timeout_seconds: float = Field(default=10, gt=0, le=120)
    smtp_ca_file: str = ""  # a CA bundle for a server with a private certificate ("" = the system's)
    notify_poll_seconds: float = Field(default=10, ge=0.05, le=3600)
    # The first retry of an undelivered notification; each next one waits twice as long (to 2 h).
    notify_retry_seconds: float = Field(default=30, ge=0.1, le=3600)

    @model_validator(mode="before")
    @classmethod
    def _no_clear_passwords(cls, data: Any) -> Any:
        if isinstance(data, dict) and "smtp_password" in data:
            raise ValueError(
                "smtp_password must not be in the config file (it would be in clear): remove it and "
                "set it with 'piseduce webui smtp-password CONFIG' (it reads the password on stdin)"
            )
        return data

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str) -> str:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https:// (or be empty)")
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v: list[str]) -> list[str]:
        import ipaddress

        for item in v:
            try:
                ipaddress.ip_network(item.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network (such as 10.0.0.0/8)") from None
        return v

    @property
    def cookies_secure(self) -> bool:
        if self.secure_cookies is not None:
            return self.secure_cookies
        return self.public_url.startswith("https://")

    @property
    def first_admin_path(self) -> Path:
        return self.resolve(self.first_admin_file)

    @property
    def key_path(self) -> Path:
        return self.resolve(self.key_file)

    @property
    def smtp_ca_path(self) -> Path | None:
        return self.resolve(self.smtp_ca_file) if self.smtp_ca_file else None

    @property
    def secret_path(self) -> Path:
        return self.resolve(self.secret_file)

    @property
    def database_url(self) -> str:
        return resolve_db_url(self.db_url, self.base_dir)


def _load(model: type[_Base], path: str | Path) -> Any:
    p = Path(path).expanduser().resolve()
    data = read_json(p)
    try:
        cfg = model.model_validate({**data, "path": p})
    except ValidationError as exc:
        key, msg = first_error(exc)
        raise ConfigError(f"{p}: key {key!r}: {msg}") from None
    known = set(model.model_fields)
    for key in data:
        if key not in known:
            log.warning("%s: unknown key %r ignored", p, key)
    return cfg


def load_agent_config(path: str | Path, *, check_files: bool = True) -> AgentConfig:
    cfg: AgentConfig = _load(AgentConfig, path)
    if check_files and cfg.node_type in ("g5k", "iot-lab") and not cfg.key_path.is_file():
        raise ConfigError(
            f"{cfg.path}: key 'key_file': {cfg.key_path} does not exist; copy the key file generated by "
            f"'piseduce webui gen-key' there (a {cfg.node_type} agent needs it to read users' credentials)"
        )
    return cfg


def load_webui_config(path: str | Path) -> WebuiConfig:
    cfg: WebuiConfig = _load(WebuiConfig, path)
    return cfg
