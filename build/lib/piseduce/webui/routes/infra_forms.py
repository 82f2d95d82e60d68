"""The fields of the infrastructure pages' forms that the web UI checks itself, before asking the
agent (it words them better): names, whole numbers in a range, a node's free properties."""

from __future__ import annotations

import re

from starlette.datastructures import FormData

from piseduce.numbers import parse_int, read_decimal, read_int
from piseduce.webui.web import form_str

# The agents' own patterns: a name that fails them would only earn a 404/422 from the agent.
NODE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:+-]{0,127}$")


ITEM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


PROP_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class FormError(ValueError):
    """A field the web UI can reject before asking the agent."""


def int_field(
    form: dict[str, str], key: str, label: str, lo: int, hi: int, default: int | None
) -> int | None:
    text = form.get(key, "")
    if not text.strip(" "):
        return default
    try:
        value = parse_int(text, hand_typed=True)
    except ValueError:
        raise FormError(f"{label}: a whole number between {lo} and {hi}") from None
    if not lo <= value <= hi:
        raise FormError(f"{label}: a whole number between {lo} and {hi}")
    return value


def _prop_value(text: str) -> str | int | float | bool:
    """Numbers stay numbers (so that reserve filters can compare them), booleans stay booleans."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    # Only a number written as Python writes it back stays a number ("+3", "2.50" stay text).
    n = read_int(text)
    if n is not None and str(n) == text:
        return n
    f = read_decimal(text)
    if f is not None and (repr(f) == text or str(f) == text):
        return f
    return text


def parse_properties(text: str) -> dict[str, str | int | float | bool]:
    """`key=value` lines (or `;`-separated) into the node's free properties."""
    out: dict[str, str | int | float | bool] = {}
    for raw in re.split(r"[\n;]", text):
        line = raw.strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not PROP_KEY_RE.match(key):
            raise FormError(
                f"properties: '{line[:60]}' is not key=value (keys: letters, digits, '_', '.', '-')"
            )
        if len(value) > 256:
            raise FormError(f"properties: the value of {key} is longer than 256 characters")
        out[key] = _prop_value(value)
    if len(out) > 32:
        raise FormError("properties: at most 32")
    return out


def form_dict(form: FormData, keys: tuple[str, ...], limit: int = 4096) -> dict[str, str]:
    return {k: form_str(form, k, limit) for k in keys}
