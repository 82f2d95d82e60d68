"""Values JSON cannot carry: non-finite numbers (NaN, Infinity) and lone UTF-16 surrogates.

Python's json module reads `NaN`, `Infinity` and `"\\ud800"` without complaint, but cannot write
them back (strict JSON has no NaN; UTF-8 has no lone surrogate), nor can a database store such a
string. Inputs are refused with `first_unsafe` (a 422 naming the field); answers go through
`dumps`, which never fails: an error that echoes a hostile input still gets its 4xx, not a 500.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


def _describe(path: list[str], what: str) -> str:
    where = ".".join(path)
    return f"{where}: {what}" if where else what


def first_unsafe(value: Any, path: list[str] | None = None) -> str | None:
    """Where the first non-finite number or lone surrogate in `value` is, in words; None if none."""
    path = path or []
    if isinstance(value, float) and not math.isfinite(value):
        return _describe(path, "numbers must be finite (not NaN or Infinity)")
    if isinstance(value, str):
        if _SURROGATE.search(value):
            return _describe(path, "text must be valid Unicode (a lone surrogate such as \\ud800 is not)")
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = first_unsafe(key, path) if isinstance(key, str) else None
            found = found or first_unsafe(item, [*path, str(key)[:64]])
            if found:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = first_unsafe(item, [*path, str(i)])
            if found:
                return found
    return None


def clean(value: Any) -> Any:
    """A copy that JSON can carry: non-finite numbers as strings, lone surrogates escaped."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {clean(k) if isinstance(k, str) else k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def dumps(content: Any) -> bytes:
    """Strict JSON in UTF-8, whatever `content` holds (cleaned only when it must be)."""
    try:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    except (ValueError, UnicodeEncodeError):
        return json.dumps(clean(content), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
