"""Form fields read strictly: a value the page would have to cut or reinterpret is refused in words.

`web.form_str` cuts a field at its limit, which suits a field the handler checks afterwards (a
password too long is said so); a field passed on to an agent (a bin name) must not be cut: a
100,000-character bin would be booked as its first 64 characters. Numbers go through
piseduce.numbers: "1_0" is not 10, "-0" is not 0, "nan" is not a number of hours; the spaces
around a number typed by hand are dropped, a line break or a tab is refused (docs/admin-guide §8).
"""

from __future__ import annotations

from starlette.datastructures import FormData

from piseduce.numbers import parse_decimal, parse_int


def form_text(form: FormData, name: str, limit: int, label: str) -> str:
    """A text field, whole; ValueError naming `label` and the limit when it is longer."""
    value = form.get(name)
    text = value if isinstance(value, str) else ""
    if len(text) > limit:
        raise ValueError(f"{label} takes at most {limit} characters (this one has {len(text)}).")
    return text


def form_decimal(
    form: FormData, name: str, label: str, *, lo: float, hi: float, default: float | None = None
) -> float:
    """A number such as 2 or 0.5 (no exponent, nan or inf, no minus sign when lo >= 0); an empty
    field is `default` (needed when None). ValueError in words."""
    text = form_text(form, name, 40, label)
    if not text.strip(" "):
        if default is None:
            raise ValueError(f"{label}: a number is needed.")
        return default
    try:
        return parse_decimal(text, lo=lo, hi=hi, hand_typed=True)
    except ValueError as exc:
        raise ValueError(f"{label}: {exc}.") from None


def form_int(form: FormData, name: str, label: str, *, lo: int, hi: int, default: int | None = None) -> int:
    """A whole number written with digits 0-9; as form_decimal otherwise."""
    text = form_text(form, name, 40, label)
    if not text.strip(" "):
        if default is None:
            raise ValueError(f"{label}: a whole number is needed.")
        return default
    try:
        return parse_int(text, lo=lo, hi=hi, hand_typed=True)
    except ValueError as exc:
        raise ValueError(f"{label}: {exc}.") from None
