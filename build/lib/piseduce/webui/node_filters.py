"""Node property filters: one syntax and one matcher for the Reserve page and the users' API.

A filter is `property OP value`, OP one of `=`, `!=`, `>=`, `<=`. `=` and `!=` compare as text
(case-insensitive); `>=` and `<=` as numbers, read strictly (piseduce.numbers: "1_0", "nan" and
"1e9" are no numbers). A number may carry a size unit — K, M, G, T, P, optionally followed by B
or iB, binary multiples as memory and disks are counted (4G = 4 GiB) — and is then compared as a
size with the property's: a property whose name ends in its unit (`memory_gb`) counts in that
unit, and a filter may name it without the unit (`memory>=4G` finds `memory_gb`). `agent` and
`type` are the node's agent and kind (the web UI knows them; agents are never asked about them).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from piseduce.numbers import read_decimal

OPS = ("=", "!=", ">=", "<=")
PSEUDO = ("agent", "type")  # filter keys the web UI handles itself
PROP_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# An expression: the property, then the first operator (longest first: '>=' before '=').
EXPR_RE = re.compile(r"^\s*([A-Za-z0-9_.-]{1,64})\s*(!=|>=|<=|=)\s*(.*?)\s*$", re.DOTALL)
UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
SIZE_RE = re.compile(r"^\s*([0-9.+-]+)\s*([KMGTPkmgtp])(?:i?[Bb])?\s*$", re.ASCII)
# A property named for its unit: memory_gb, disk_mb...
NAMED_UNIT_RE = re.compile(r"_(k|m|g|t|p)i?b$", re.IGNORECASE)
MAX_FILTERS = 32
MAX_VALUE = 256


@dataclass(frozen=True)
class Filter:
    prop: str
    op: str
    value: str

    @property
    def text(self) -> str:
        return f"{self.prop} {self.op} {self.value}"


def quantity(text: str) -> tuple[float, bool] | None:
    """(number, whether it is a size in bytes) of a filter value or a property; None if neither."""
    m = SIZE_RE.match(text)
    if m:
        num = read_decimal(m.group(1))
        return None if num is None else (num * UNITS[m.group(2).lower()], True)
    num = read_decimal(text)
    return None if num is None else (num, False)


def check(prop: str, op: str, value: str) -> Filter:
    """One filter, checked; ValueError in words (naming it) otherwise."""
    if not PROP_RE.match(prop):
        raise ValueError(f"bad property name {prop[:64]!r} (letters, digits, '_', '.', '-')")
    if op not in OPS:
        raise ValueError(f"bad comparison {op[:8]!r} in {prop} (use =, !=, >= or <=)")
    if len(value) > MAX_VALUE:
        raise ValueError(f"the value of the filter on {prop} is too long (at most {MAX_VALUE} characters)")
    if op in (">=", "<="):
        value = value.strip(" ")  # a bound typed by hand: spaces around it are dropped
        if quantity(value) is None:
            raise ValueError(f"{prop} {op} needs a number (such as 4 or 4G), not {value[:40]!r}")
    return Filter(prop, op, value)


def parse_expression(text: str) -> Filter:
    """`memory>=4G` -> Filter; ValueError naming the expression otherwise."""
    m = EXPR_RE.match(text)
    if not m:
        raise ValueError(f"filter {text[:80]!r} is not 'property OP value' with OP one of =, !=, >=, <=")
    if not m.group(3):
        raise ValueError(f"filter {text[:80]!r} has no value after {m.group(2)!r}")
    try:
        return check(m.group(1), m.group(2), m.group(3))
    except ValueError as exc:
        raise ValueError(f"filter {text[:80]!r}: {exc}") from None


def parse_chips(text: str) -> list[Filter]:
    """The Reserve page's filter chips, JSON [{prop, op, value}]; ValueError in words."""
    try:
        raw = json.loads(text or "[]")
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json can read
        raise ValueError("the filters are malformed") from None
    if not isinstance(raw, list):
        raise ValueError("the filters are malformed")
    if len(raw) > MAX_FILTERS:
        raise ValueError(f"at most {MAX_FILTERS} filters")
    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise ValueError("the filters are malformed")
        out.append(check(str(item.get("prop", "")), str(item.get("op", "=")), str(item.get("value", ""))))
    return out


def resolve(props: dict[str, Any], prop: str) -> tuple[str, Any] | None:
    """(the property's real name, its value): `prop` itself, or `prop` named with a unit."""
    if props.get(prop) is not None:
        return prop, props[prop]
    for name, value in props.items():
        m = NAMED_UNIT_RE.search(name)
        if m and name[: m.start()] == prop and value is not None:
            return name, value
    return None


def _unit_of(name: str) -> int:
    m = NAMED_UNIT_RE.search(name)
    return UNITS[m.group(1).lower()] if m else 1


def _as_size(name: str, have: Any) -> float | None:
    """A property's value in bytes: its own unit (a text such as '16G'), else its name's."""
    if isinstance(have, bool):
        return None
    q = quantity(str(have))
    if q is None:
        return None
    num, is_size = q
    return num if is_size else num * _unit_of(name)


def one_matches(props: dict[str, Any], f: Filter) -> bool:
    found = resolve(props, f.prop)
    if f.op == "!=":
        return found is None or str(found[1]).lower() != f.value.lower()
    if found is None:
        return False
    name, have = found
    if f.op == "=":
        return str(have).lower() == f.value.lower()
    want = quantity(f.value)
    if want is None:
        return False
    num = _as_size(name, have) if want[1] else (None if isinstance(have, bool) else read_decimal(str(have)))
    if num is None:
        return False
    return num >= want[0] if f.op == ">=" else num <= want[0]


def matches(props: dict[str, Any], filters: list[Filter]) -> bool:
    """AND of every filter."""
    return all(one_matches(props, f) for f in filters)


def agent_expressible(filters: list[Filter]) -> bool:
    """Whether an agent can pick nodes by these filters itself (its schema has no '!=')."""
    return all(f.op != "!=" or f.prop in PSEUDO for f in filters)


def agent_properties(filters: list[Filter], sample: dict[str, Any]) -> dict[str, Any]:
    """The filters an agent evaluates itself (pseudo keys dropped), in its Filter schema's shape,
    with the property names and units of `sample` (one of the nodes they match)."""
    out: dict[str, Any] = {}
    for f in filters:
        if f.prop in PSEUDO:
            continue
        name, have = resolve(sample, f.prop) or (f.prop, None)
        if f.op == "=":
            if isinstance(have, bool):
                out[name] = f.value.lower() in ("true", "1", "yes")
            elif isinstance(have, int | float) and (num := read_decimal(f.value)) is not None:
                out[name] = int(num) if num.is_integer() else num
            else:
                out[name] = have if isinstance(have, str) else f.value
        elif f.op in (">=", "<="):
            q = quantity(f.value)
            assert q is not None  # check() refused it otherwise
            value = q[0] / _unit_of(name) if q[1] else q[0]
            bound = out.get(name) if isinstance(out.get(name), dict) else {}
            assert isinstance(bound, dict)
            bound["min" if f.op == ">=" else "max"] = value
            out[name] = bound
    return out


def describe(filters: list[Filter]) -> str:
    return " AND ".join(f.text for f in filters) or "any node"
