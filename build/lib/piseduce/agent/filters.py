"""Property filters of a booking (`{"model": "RPI4B", "memory_gb": {"min": 2}}`): which node
matches, and how a filter reads in a refusal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from piseduce.agent.schemas import Filter
from piseduce.numbers import read_decimal


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        # Strictly: "1_0" or "１０" is not the number 10 (numbers.py).
        return read_decimal(v)
    return None


def value_matches(have: Any, want: Any) -> bool:
    """Strings compare case-insensitively, numbers by value, {"min","max"} as an inclusive range."""
    if isinstance(want, Mapping):
        n = _number(have)
        if n is None:
            return False
        lo, hi = want.get("min"), want.get("max")
        return (lo is None or n >= lo) and (hi is None or n <= hi)
    if isinstance(want, bool):
        if isinstance(have, bool):
            return have == want
        return isinstance(have, str) and have.strip().lower() == str(want).lower()
    if isinstance(have, bool):
        return isinstance(want, str) and want.strip().lower() == str(have).lower()
    if isinstance(want, int | float):
        n = _number(have)
        return n is not None and n == float(want)
    if isinstance(want, str):
        if isinstance(have, int | float):
            n = _number(want)
            return n is not None and n == float(have)
        return isinstance(have, str) and have.strip().casefold() == want.strip().casefold()
    return bool(have == want)


def lowered_match(lowered: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """`lowered`: properties with lower-case keys; `wanted`: lower-case keys too."""
    for key, want in wanted.items():
        if key not in lowered:
            return False
        have = lowered[key]
        if isinstance(want, str) and isinstance(have, str):
            # The common case (model=RPI4B), without the general dispatch.
            if have.strip().casefold() != want.strip().casefold():
                return False
        elif not value_matches(have, want):
            return False
    return True


def properties_match(props: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    return lowered_match(
        {str(k).lower(): v for k, v in props.items()}, {k.lower(): v for k, v in wanted.items()}
    )


def describe_filter(f: Filter) -> str:
    if f.nodes is not None:
        return "nodes " + ", ".join(f.nodes)
    if not f.properties:
        return "any node"
    parts = []
    for k, v in f.properties.items():
        if isinstance(v, Mapping):
            rng = []
            if v.get("min") is not None:
                rng.append(f">={v['min']:g}")
            if v.get("max") is not None:
                rng.append(f"<={v['max']:g}")
            parts.append(f"{k}{''.join(rng) or ' any'}")
        else:
            parts.append(f"{k}={v}")
    return " ".join(parts)
