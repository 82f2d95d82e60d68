"""A deploy form's values from what the user gave: checked against the reservation's own form
before anything is deployed (a field it has not is refused naming those it has), the form's
defaults for what is left out, `env` put in the field that holds the system or the firmware, and
a file field given as `@path` read and sent as the form asks (base64, its name alongside), and a
list-of-keys field given as keys one per line or `@file`."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from piseduce.client import models as m
from piseduce.client.errors import BadValues
from piseduce.sshjump import KEY_RE

# The field `env` fills: an operating system's (Raspberry Pi, Grid'5000) or a firmware (IoT-LAB).
ENV_FIELDS = ("environment", "firmware")
MAX_FILE = 4 * 1024 * 1024  # the API takes a file field up to 4 MiB once decoded (docs/api.md)


def fill(fields: list[m.FormField], values: Mapping[str, Any], env: str | None, key: str) -> dict[str, Any]:
    names = {f.name for f in fields}
    unknown = sorted(set(values) - names)
    if unknown:
        have = ", ".join(sorted(names))
        raise BadValues(f"{key}: the deploy form has no field {', '.join(unknown)} (its fields: {have})")
    out: dict[str, Any] = {f.name: f.default for f in fields if f.default not in (None, "")}
    if env is not None:
        target = next((n for n in ENV_FIELDS if n in names), None)
        if target is None:
            raise BadValues(
                f"{key}: its deploy form has no environment to choose ({', '.join(sorted(names))})"
            )
        out[target] = env
    out.update(values)
    for f in fields:
        value = out.get(f.name)
        if f.kind == "file" and isinstance(value, str) and value.startswith("@"):
            out[f.name], filename = read_file(Path(value[1:]), f.name)
            if f"{f.name}_name" in names and not values.get(f"{f.name}_name"):
                out[f"{f.name}_name"] = filename
        elif f.kind == "ssh_keys" and isinstance(value, str):
            out[f.name] = ssh_keys(value, f.name)
    missing = [f.name for f in fields if f.required and out.get(f.name) in (None, "")]
    if missing:
        raise BadValues(f"{key}: the deploy form needs {', '.join(missing)} (set {missing[0]}=...)")
    return out


def ssh_keys(value: str, field: str) -> list[str]:
    """A list-of-keys field from one `--set`: keys one per line, or `@file` (an id_*.pub or an
    authorized_keys file: blank and # lines skipped); a line that is no key is refused here, naming
    it, rather than by the agent as a 422 on a list."""
    text = value
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        try:
            text = path.read_text(errors="replace")[:MAX_FILE]
        except OSError as exc:
            raise BadValues(f"{field}=@{path}: {exc.strerror or exc}") from None
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    for n, key in enumerate(keys, 1):
        if not KEY_RE.fullmatch(" ".join(key.split()[:2])):
            raise BadValues(f"{field}: line {n} is not an SSH public key ({key[:30]!r}…): give keys "
                            f"one per line or {field}=@~/.ssh/id_ed25519.pub")
    return keys


def read_file(path: Path, field: str) -> tuple[str, str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadValues(f"{field}=@{path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE:
        raise BadValues(f"{field}=@{path}: {len(data)} bytes, more than the {MAX_FILE} a form takes")
    return base64.b64encode(data).decode("ascii"), path.name
