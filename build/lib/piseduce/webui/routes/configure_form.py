"""The Configure page's form, read back: each card's deploy body for its agent, and what the user
entered, so that a page sent back with an error shows every value again.

Card `i` posts its fields as `r<i>.<name>`, with markers naming the fields that need care
(`r<i>.__checkbox`, `__number`, `__file`, `__ssh`), its reservation as `r<i>.ref`, its group as
`r<i>.group` and its tick as `r<i>.deploy` (the marker `r<i>.__tick` says the card had a tick box;
a form without it deploys the card). Group `g` posts its bin as `g<g>.bin`; a form without group
fields gives one `bin` for every card.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from starlette.datastructures import FormData, UploadFile

from piseduce.sshkeys import parse_keys
from piseduce.webui.web import form_list, form_str, parse_number

FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
BIN_LIMIT = 64
BIN_RE = re.compile(r"^[A-Za-z0-9 ._-]{1,64}$")
# The same rule for the browser's `pattern` attribute.
BIN_PATTERN = r"[A-Za-z0-9 ._\-]+"
# A firmware upload (IoT-LAB); the agent checks its own limit too.
MAX_UPLOAD = 4 * 1024 * 1024
RESERVED = ("ref", "group", "deploy", "ssh_keys", "ssh_keys_extra")


@dataclass
class Submitted:
    """What one card held when its form was sent (passwords included: they are the user's own
    deploy values, shown to them anyway on Manage; files cannot be put back by a page)."""

    ticked: bool = True
    bin: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    checked_fields: set[str] = field(default_factory=set)
    checked: set[str] = field(default_factory=set)
    ssh: list[str] | None = None
    ssh_extra: str = ""
    files: dict[str, str] = field(default_factory=dict)  # field -> the file name chosen


def is_ticked(form: FormData, idx: int) -> bool:
    prefix = f"r{idx}."
    if f"{prefix}__tick" not in form:
        return True
    return form_str(form, f"{prefix}deploy", 8) in ("on", "true", "1")


def entered_bin(form: FormData, idx: int) -> str | None:
    """The bin given for card `idx` (its group's, else the form's one); None when none was sent
    (the page disables the bin of a group with no ticked node)."""
    group = form_str(form, f"r{idx}.group", 8)
    # One character past the limit: a longer bin is refused as such, never booked cut (_jobs).
    if group.isdigit() and f"g{group}.bin" in form:
        return form_str(form, f"g{group}.bin", BIN_LIMIT + 1).strip()
    if "bin" in form:
        return form_str(form, "bin", BIN_LIMIT + 1).strip()
    return None


def card_bin(form: FormData, idx: int) -> str:
    return entered_bin(form, idx) or ""


def submitted(form: FormData, idx: int) -> Submitted:
    prefix = f"r{idx}."
    out = Submitted(ticked=is_ticked(form, idx), bin=entered_bin(form, idx))
    out.checked_fields = set(form_list(form, f"{prefix}__checkbox", 64))
    files = set(form_list(form, f"{prefix}__file", 64))
    for key in form:
        name = key[len(prefix) :] if key.startswith(prefix) else ""
        if not name or name in RESERVED or name.startswith("__") or not FIELD_RE.match(name):
            continue
        value = form.get(key)
        if name in files:
            if isinstance(value, UploadFile) and value.filename:
                out.files[name] = PurePath(value.filename).name[:128]
        elif name in out.checked_fields:
            if form_str(form, key, 8) in ("on", "true", "1"):
                out.checked.add(name)
        else:
            out.fields[name] = form_str(form, key, 16384)
    if f"{prefix}__ssh" in form:
        out.ssh = form_list(form, f"{prefix}ssh_keys", 100)
        out.ssh_extra = form_str(form, f"{prefix}ssh_keys_extra", 64 * 1024)
    return out


async def _add_upload(params: dict[str, Any], name: str, upload: Any) -> None:
    """A file field goes to the agent base64-encoded, its name in `<name>_name` unless typed in."""
    if not isinstance(upload, UploadFile) or not upload.filename:
        return
    data = await upload.read(MAX_UPLOAD + 1)
    if len(data) > MAX_UPLOAD:
        raise ValueError(f"{name}: the file is larger than {MAX_UPLOAD // (1024 * 1024)} MiB")
    if data:
        params[name] = base64.b64encode(data).decode()
        params.setdefault(f"{name}_name", PurePath(upload.filename).name[:128])


async def deploy_params(form: FormData, idx: int, account: dict[str, str]) -> dict[str, Any]:
    """The deploy body of card `idx`; ValueError in words for what cannot be sent."""
    prefix = f"r{idx}."
    params: dict[str, Any] = {}
    checkboxes = set(form_list(form, f"{prefix}__checkbox", 64))
    numbers = set(form_list(form, f"{prefix}__number", 64))
    files = set(form_list(form, f"{prefix}__file", 64))
    for key in form:
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if name in RESERVED or name.startswith("__") or not FIELD_RE.match(name):
            continue
        if name in files or name in checkboxes:
            continue
        value = form_str(form, key, 16384)
        if name in numbers and value.strip(" "):
            try:
                params[name] = parse_number(value)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        elif value != "":
            params[name] = value
    for name in files:
        if FIELD_RE.match(name):
            await _add_upload(params, name, form.get(f"{prefix}{name}"))
    for name in checkboxes:
        if FIELD_RE.match(name):
            params[name] = form_str(form, f"{prefix}{name}", 8) in ("on", "true", "1")
    if f"{prefix}__ssh" in form:
        keys = [account[fp] for fp in form_list(form, f"{prefix}ssh_keys", 100) if fp in account]
        extra = form_str(form, f"{prefix}ssh_keys_extra", 64 * 1024)
        if extra.strip():
            keys += [k.line for k in parse_keys(extra)]
        params["ssh_keys"] = list(dict.fromkeys(keys))
    return params
