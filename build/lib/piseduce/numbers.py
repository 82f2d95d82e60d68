"""One strict way to read a number written as text: a form field, a query string, a path segment, a
JSON string where a number is expected.

Python's int() and float() read far more than a person types as a number: "1_0" is 10, "١٠" and
"１０" (Arabic-Indic and fullwidth digits) are 10, float() reads "nan", "inf" and "1e999"; and
pydantic's lax mode reads "1_0" as 10 too. Such a text is refused here, in words, never
reinterpreted: ASCII digits, an optional sign, for a decimal an optional fraction with a dot.
A path segment, a query parameter or a JSON string is read exactly: no space around it, no line
break (" 5 " and "2\n" are refused: int() and pydantic would read them). Only a form field typed
by hand (`hand_typed=True`) may have spaces around it, which are dropped; never a tab, a line
break or anything else. A minus sign on a number that may not be negative is refused even for
"-0", which would otherwise be read as 0 (and 0 may mean something else, such as "by the
reservation's own length").
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator

INT_RE = re.compile(r"[+-]?[0-9]{1,15}", re.ASCII)
DECIMAL_RE = re.compile(r"[+-]?(?:[0-9]{1,15}(?:\.[0-9]{0,15})?|\.[0-9]{1,15})", re.ASCII)
MAX_TEXT = 40


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _span(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" from {_num(lo)} to {_num(hi)}"
    if lo is not None:
        return f" of {_num(lo)} or more"
    if hi is not None:
        return f" of at most {_num(hi)}"
    return ""


# Both patterns below are unambiguous (a run of digits can be split between two parts in one way
# only): `[0-9]+\.?[0-9]*` backtracked quadratically, and 100,000 digits took 50 s of CPU to refuse.
EXPONENT_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][+-]?[0-9]+", re.ASCII)
DIGITS_RE = re.compile(r"[+-]?[0-9]*(?:\.[0-9]*)?", re.ASCII)


def _refuse_float_words(t: str, what: str, expected: str) -> None:
    """What float() would have read: nan, inf, an exponent, said as such."""
    shown = t if len(t) <= MAX_TEXT else t[:MAX_TEXT] + "…"
    if t.lower().lstrip("+-") in ("nan", "inf", "infinity"):
        raise ValueError(
            f"a finite {expected.removeprefix('a ')} is expected, not {shown!r}"
            if what == "a number"
            else f"{expected} is expected, not {shown!r}"
        )
    if EXPONENT_RE.fullmatch(t):
        if what == "a number" and not math.isfinite(float(t)):
            raise ValueError(f"a finite {expected.removeprefix('a ')} is expected, not {shown!r}")
        raise ValueError(f"{expected} is expected, written without an exponent (not {shown!r})")


def _checked(
    text: str, pattern: re.Pattern[str], what: str, lo: float | None, hi: float | None, hand_typed: bool
) -> str:
    expected = f"{what}{_span(lo, hi)}"
    if not isinstance(text, str):
        raise ValueError(f"{expected} is expected")
    t = text.strip(" ") if hand_typed else text
    if t != t.strip():
        around = "line breaks or tabs" if hand_typed else "spaces or line breaks"
        raise ValueError(f"{expected} is expected, without {around} around it (not {_shown(t)!r})")
    if not pattern.fullmatch(t):
        _refuse_float_words(t, what, expected)
        digits = sum(ch in "0123456789" for ch in t)
        if digits > 15 and DIGITS_RE.fullmatch(t):
            raise ValueError(f"{expected} is expected, with fewer digits")
        shown = _shown(t)
        form = "digits 0-9 and a dot" if pattern is DECIMAL_RE else "digits 0-9 only"
        raise ValueError(f"{expected} is expected ({form}), not {shown!r}")
    if t.startswith("-") and lo is not None and lo >= 0:
        raise ValueError(f"{expected} is expected, without a minus sign (not {t!r})")
    return t


def _shown(t: str) -> str:
    return t if len(t) <= MAX_TEXT else t[:MAX_TEXT] + "…"


def _in_range(value: float, expected: str, lo: float | None, hi: float | None) -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{expected}{_span(lo, hi)} is expected, not {_num(value)}")


def parse_int(text: str, *, lo: int | None = None, hi: int | None = None, hand_typed: bool = False) -> int:
    """A whole number written in decimal ASCII digits; ValueError in words otherwise."""
    value = int(_checked(text, INT_RE, "a whole number", lo, hi, hand_typed))
    _in_range(value, "a whole number", lo, hi)
    return value


def parse_decimal(
    text: str, *, lo: float | None = None, hi: float | None = None, hand_typed: bool = False
) -> float:
    """A decimal number such as 2, 0.5 or 1.25 (no exponent, no nan or inf); ValueError in words."""
    value = float(_checked(text, DECIMAL_RE, "a number", lo, hi, hand_typed))
    if not math.isfinite(value):  # pragma: no cover - the pattern bounds the digits
        raise ValueError("a finite number is expected")
    _in_range(value, "a number", lo, hi)
    return value


def read_decimal(text: str, *, hand_typed: bool = False) -> float | None:
    """parse_decimal without words: None for anything it refuses (a comparison that does not apply)."""
    try:
        return parse_decimal(text, hand_typed=hand_typed)
    except ValueError:
        return None


def read_int(text: str, *, lo: int | None = None, hi: int | None = None) -> int | None:
    """parse_int (exact) without words: None for anything it refuses (an id in a form's value
    or a path, where the answer is "unknown" whatever is wrong with it)."""
    try:
        return parse_int(text, lo=lo, hi=hi)
    except ValueError:
        return None


def parse_number(
    text: str, *, lo: float | None = None, hi: float | None = None, hand_typed: bool = False
) -> int | float:
    """parse_decimal, as an int when it is whole (what an agent's JSON expects of "2")."""
    value = parse_decimal(text, lo=lo, hi=hi, hand_typed=hand_typed)
    return int(value) if value.is_integer() else value


def _int_text(value: Any) -> Any:
    if isinstance(value, bool):  # pydantic would take true for 1
        raise ValueError("a whole number is expected, not true or false")
    return parse_int(value) if isinstance(value, str) else value


def _decimal_text(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a number is expected, not true or false")
    return parse_decimal(value) if isinstance(value, str) else value


def _not_negative_zero(value: Any) -> Any:
    if isinstance(value, float) and value == 0 and math.copysign(1.0, value) < 0:
        raise ValueError("a number of 0 or more is expected, without a minus sign (not -0)")
    return value


# Pydantic fields and parameters (JSON bodies, query strings, path segments): numbers as JSON
# numbers, or as text read exactly by the rules above (pydantic's own lax reading of text would
# take "1_0" for 10 and " 5 " for 5). Constraints (ge, le...) still apply.
StrictInt = Annotated[int, BeforeValidator(_int_text)]
StrictFloat = Annotated[float, BeforeValidator(_decimal_text)]
# A float that may not be negative, -0 included (JSON can carry -0).
UnsignedFloat = Annotated[float, BeforeValidator(_not_negative_zero), BeforeValidator(_decimal_text)]
