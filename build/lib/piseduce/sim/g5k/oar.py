"""The small OAR languages the emulator understands: resource requests, property filters (an SQL
WHERE subset), walltimes and reservation dates, parsed the way oarsub reads them."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from zoneinfo import ZoneInfo

# Every Grid'5000 site runs OAR in French local time: reservation dates are read in it.
SITE_TZ = ZoneInfo("Europe/Paris")


class OarSyntaxError(ValueError):
    pass


# ---------------------------------------------------------------- walltimes


def parse_walltime(text: str | int) -> int:
    """`H`, `H:MM` or `H:MM:SS` (hours may exceed 24), or an integer of seconds → seconds."""
    if isinstance(text, int):
        if text <= 0:
            raise OarSyntaxError(f"bad walltime {text!r}")
        return text
    s = text.strip()
    if not re.fullmatch(r"\d+(:\d{1,2}){0,2}", s):
        raise OarSyntaxError(f"bad walltime {text!r} (expected H:MM:SS)")
    parts = [int(p) for p in s.split(":")] + [0, 0]
    h, m, sec = parts[0], parts[1], parts[2]
    if m > 59 or sec > 59:
        raise OarSyntaxError(f"bad walltime {text!r}")
    total = h * 3600 + m * 60 + sec
    if total <= 0:
        raise OarSyntaxError(f"walltime {text!r} must be positive")
    return total


def parse_walltime_delta(text: str | int) -> tuple[str, int]:
    """oarwalltime's argument: `+H:MM:SS` (extend), `-H:MM:SS` (reduce) or `H:MM:SS` (new walltime)."""
    if isinstance(text, int):
        return ("+", text)
    s = str(text).strip()
    sign = ""
    if s[:1] in "+-":
        sign, s = s[0], s[1:]
    return (sign, parse_walltime(s))


def format_walltime(seconds: int) -> str:
    """OAR's own display, `H:M:S` without padding."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60}:{seconds % 60}"


# ---------------------------------------------------------------- reservation dates


def parse_reservation(text: str, now: float) -> float:
    """`YYYY-MM-DD hh[:mm[:ss]]` in the site's local time (an optional `,end` is ignored), `now`,
    or an epoch number → epoch seconds."""
    s = str(text).strip().split(",")[0].strip()
    if s == "now":
        return now
    if re.fullmatch(r"\d{9,11}", s):
        return float(s)
    m = re.fullmatch(r"(\d{4})-(\d{1,2})-(\d{1,2})(?:\s+(\d{1,2})(?::(\d{1,2}))?(?::(\d{1,2}))?)?", s)
    if not m:
        raise OarSyntaxError(f"bad reservation date {text!r} (expected 'YYYY-MM-DD hh:mm:ss')")
    y, mo, d, h, mi, se = (int(g) if g else 0 for g in m.groups())
    try:
        local = dt.datetime(y, mo, d, h, mi, se, tzinfo=SITE_TZ)
    except ValueError as exc:
        raise OarSyntaxError(f"bad reservation date {text!r}: {exc}") from None
    return local.timestamp()


# ---------------------------------------------------------------- resource requests


@dataclass
class ResourceRequest:
    nodes: int | None  # None = ALL/BEST: every matching node
    walltime: int
    filter: str = ""  # the `{...}` SQL constraint, ANDed with the job's properties


DEFAULT_WALLTIME = 3600  # Grid'5000's default when a job names none


def parse_resources(text: str | None) -> ResourceRequest:
    """`nodes=2,walltime=1:30`, `{cluster='grisou'}/nodes=2,walltime=2`, `host=1`, `/nodes=ALL`."""
    s = (text or "nodes=1").strip()
    walltime = DEFAULT_WALLTIME
    m = re.search(r",?\s*walltime\s*=\s*([0-9:]+)\s*$", s)
    if m:
        walltime = parse_walltime(m.group(1))
        s = s[: m.start()].strip()
    filt = ""
    m = re.match(r"^\{(.*)\}\s*", s, re.S)
    if m:
        filt = m.group(1).strip()
        s = s[m.end() :]
    s = s.lstrip("/").strip()
    if not s:
        return ResourceRequest(1, walltime, filt)
    m = re.fullmatch(r"(nodes|host|network_address)\s*=\s*(\d+|ALL|BEST)", s, re.I)
    if not m:
        raise OarSyntaxError(f"bad resource request {text!r} (expected nodes=N,walltime=H:MM)")
    count = m.group(2).upper()
    nodes = None if count in ("ALL", "BEST") else int(count)
    if nodes is not None and nodes < 1:
        raise OarSyntaxError(f"bad resource request {text!r}: nodes must be at least 1")
    return ResourceRequest(nodes, walltime, filt)


# ---------------------------------------------------------------- property filters

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+(?:\.\d+)?)|(?P<op><>|!=|<=|>=|=|<|>)"
    r"|(?P<punct>[(),])|(?P<word>[A-Za-z_][A-Za-z0-9_.]*))"
)

Predicate = Callable[[Mapping[str, object]], bool]


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise OarSyntaxError(f"bad SQL property near {text[pos : pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        value = m.group(kind)
        if kind == "str":
            value = value[1:-1].replace("''", "'")
        out.append((kind, value))
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def _compare(left: object, op: str, right: object) -> bool:
    if isinstance(left, (int, float)) and not isinstance(left, bool) and isinstance(right, (int, float)):
        a: object = float(left)
        b: object = float(right)
    else:
        a, b = str(left), str(right)
    if op == "=":
        return a == b
    if op in ("!=", "<>"):
        return a != b
    if isinstance(a, float) and isinstance(b, float):
        return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]
    sa, sb = str(a), str(b)
    return {"<": sa < sb, ">": sa > sb, "<=": sa <= sb, ">=": sa >= sb}[op]


def _like(value: object, pattern: str) -> bool:
    rx = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, str(value)) is not None


class _Parser:
    def __init__(self, text: str, known: set[str]) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.known = known

    def peek(self, kind: str | None = None, value: str | None = None) -> bool:
        if self.i >= len(self.toks):
            return False
        k, v = self.toks[self.i]
        if kind is not None and k != kind:
            return False
        return value is None or v.lower() == value.lower()

    def take(self) -> tuple[str, str]:
        if self.i >= len(self.toks):
            raise OarSyntaxError("bad SQL property: unexpected end")
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect(self, value: str) -> None:
        k, v = self.take()
        if v.lower() != value.lower():
            raise OarSyntaxError(f"bad SQL property: expected {value!r}, got {v!r}")

    def parse(self) -> Predicate:
        if not self.toks:
            return lambda _props: True
        pred = self.expr()
        if self.i != len(self.toks):
            raise OarSyntaxError(f"bad SQL property near {self.toks[self.i][1]!r}")
        return pred

    def expr(self) -> Predicate:
        terms = [self.term()]
        while self.peek("word", "or"):
            self.take()
            terms.append(self.term())
        if len(terms) == 1:
            return terms[0]
        return lambda p: any(t(p) for t in terms)

    def term(self) -> Predicate:
        factors = [self.factor()]
        while self.peek("word", "and"):
            self.take()
            factors.append(self.factor())
        if len(factors) == 1:
            return factors[0]
        return lambda p: all(f(p) for f in factors)

    def factor(self) -> Predicate:
        if self.peek("word", "not"):
            self.take()
            inner = self.factor()
            return lambda p: not inner(p)
        if self.peek("punct", "("):
            self.take()
            inner = self.expr()
            self.expect(")")
            return inner
        return self.comparison()

    def value(self) -> object:
        k, v = self.take()
        if k == "str":
            return v
        if k == "num":
            return float(v)
        raise OarSyntaxError(f"bad SQL property: expected a value, got {v!r}")

    def comparison(self) -> Predicate:
        k, name = self.take()
        if k != "word":
            raise OarSyntaxError(f"bad SQL property: expected a property name, got {name!r}")
        name = name.lower()
        if name not in self.known:
            raise OarSyntaxError(f"unknown resource property {name!r}")
        negate = False
        if self.peek("word", "not"):
            self.take()
            negate = True
        if self.peek("word", "in"):
            self.take()
            self.expect("(")
            values = [self.value()]
            while self.peek("punct", ","):
                self.take()
                values.append(self.value())
            self.expect(")")

            def _in(p: Mapping[str, object]) -> bool:
                return any(_compare(p.get(name), "=", v) for v in values) != negate

            return _in
        if self.peek("word", "like"):
            self.take()
            pattern = str(self.value())
            return lambda p: _like(p.get(name), pattern) != negate
        if negate:
            raise OarSyntaxError("bad SQL property: NOT must precede IN or LIKE")
        k, op = self.take()
        if k != "op":
            raise OarSyntaxError(f"bad SQL property: expected an operator after {name!r}")
        right = self.value()
        return lambda p: _compare(p.get(name), op, right)


def parse_properties(text: str | None, known: set[str]) -> Predicate:
    """Compile an OAR property filter (`host in ('a','b') and cluster='c'`) into a predicate over
    a node's OAR resource properties. Unknown property names are errors, as in OAR."""
    return _Parser(text or "", known).parse()
