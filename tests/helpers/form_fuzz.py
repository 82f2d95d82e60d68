"""A form fuzzer for the web UI's POST routes (test_webui_form_fuzz.py).

The routes are enumerated from the application itself, so a route added later is fuzzed without
anyone listing it; each route's field names are read from the forms of the pages (plus a common
set), and its path parameters get values of their type and hostile ones. The cases are
deterministic (a seeded generator per route) and bounded (`CASES_PER_ROUTE`): empty and missing
fields, numbers JSON cannot carry (NaN, inf, 1e999), lone surrogates and invalid UTF-8 (in
multipart bodies, the only way they reach a form), huge values, wrong types (a file where text is
expected, a field repeated)."""

from __future__ import annotations

import random
import re
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from fastapi.routing import APIRoute, iter_route_contexts

CASES_PER_ROUTE = 32
NUMBER_RE = re.compile(r"-?\d+(\.\d+)?")
TEXT_SEEDS = [
    "", "0", "-1", "1", "2", "nan", "NaN", "inf", "-Infinity", "1e999", "-0", "9" * 400,
    "x" * 100_000, "<script>alert(1)</script>", "../../etc/passwd", "' OR 1=1 --", "\x00", "[]", "{}",
    '[{"prop":"memory_gb","op":">=","value":"nan"}]', '[{"prop":"x","op":"~","value":1}]', "true", "on",
    "é" * 3000, "\u202e\u0000", "pi-1", "1:1", "1:999999999999", "a b", "%ED%A0%80", "\ud800", "\udfff",
    # Words the forms take, so that cases get past the first checks.
    "count", "later", "now", "destroy", "extend", "reboot", "tiny", "2030-01-01T10:00", "v3", "available",
]
# Bytes no UTF-8 text holds: a lone surrogate as UTF-8 would encode it, a byte-order mark, a cut
# sequence. Only a multipart body carries them as they are.
BYTE_SEEDS = [b"\xed\xa0\x80", b"\xff\xfe\x00", b"\xc3", b"ok\xe2\x82"]
COMMON_FIELDS = ["email", "password", "confirm", "current", "name", "host", "port", "token", "keys",
                 "fingerprint", "login", "status", "hours", "action", "sel", "node", "count", "duration",
                 "filters", "mode", "start", "when", "bin", "default", "editing", "image", "size", "r0.ref",
                 "r0.environment", "r0.__number", "r0.__checkbox", "r0.__file", "r0.__ssh", "g0.bin"]
INT_PARAMS = ["1", "2", "0", "999999999999", "-1", "nan"]
STR_PARAMS = ["x", "pi-1", "sw1", "a" * 300, "..", "%2e%2e", "nan", "é"]
# The values a parameter of that name takes in the pages, tried first.
PARAM_HINTS = {"kind": ["g5k", "iotlab"], "action": ["approve", "revoke", "promote", "demote", "remove"],
               "state": ["on", "off"], "name": ["pi-1", "sw1", "tiny"], "port": ["1", "2"]}


@dataclass
class Case:
    path: str
    fields: list[tuple[str, str | bytes]] = field(default_factory=list)
    files: list[tuple[str, bytes]] = field(default_factory=list)
    multipart: bool = False

    def describe(self) -> str:
        shown = [(k, (v[:40] if isinstance(v, str | bytes) else v)) for k, v in self.fields][:6]
        return f"POST {self.path} {'multipart ' if self.multipart else ''}{shown}"


class FormFields(HTMLParser):
    """The field names of every POST form of a page, by the form's action, and the values the
    page fills them with (the start of the mutation cases: a real form, one field changed)."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: dict[str, set[str]] = {}
        self.values: dict[str, dict[str, str]] = {}
        self._action: str | None = None
        self._form_id: str | None = None
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        name = str(a.get("name") or "")
        if tag == "form" and (a.get("method") or "").lower() == "post" and a.get("action"):
            self._action = str(a["action"]).split("#")[0].split("?")[0]
            self._form_id = a.get("id")
            self.forms.setdefault(self._action, set())
            self.values.setdefault(self._action, {})
        elif self._action is None or (a.get("form") and a.get("form") != self._form_id):
            return  # outside a POST form, or a field of another form
        elif tag in ("input", "select", "textarea", "button") and name:
            self.forms[self._action].add(name)
            kind = (a.get("type") or "text").lower()
            if kind in ("checkbox", "radio"):
                if "checked" in a:  # what a browser sends: ticked boxes only
                    self.values[self._action].setdefault(name, str(a.get("value") or "on"))
            elif tag == "input" and a.get("value") is not None:
                self.values[self._action].setdefault(name, str(a["value"]))
            self._select = name if tag == "select" else None
        elif tag == "option" and self._select and a.get("value") is not None:
            self.values[self._action].setdefault(self._select, str(a["value"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._action = None


def post_routes(app: Any) -> list[APIRoute]:
    routes = [rc.original_route for rc in iter_route_contexts(app.routes)]
    return [r for r in routes if isinstance(r, APIRoute) and "POST" in (r.methods or set())]


def page_routes(app: Any) -> list[str]:
    """The GET pages without path parameters: where the forms are."""
    routes = [rc.original_route for rc in iter_route_contexts(app.routes)]
    return [r.path for r in routes
            if isinstance(r, APIRoute) and "GET" in (r.methods or set()) and "{" not in r.path]


def fields_of(route: APIRoute, forms: dict[str, set[str]]) -> list[str]:
    names = set(COMMON_FIELDS)
    for action, found in forms.items():
        if route.path_regex.match(action):
            names |= found
    names.discard("csrf_token")
    return sorted(names)


def _param_values(route: APIRoute, rng: random.Random) -> dict[str, str]:
    hints = typing.get_type_hints(route.endpoint)
    out = {}
    for name in route.param_convertors:
        pool = INT_PARAMS if hints.get(name) is int else STR_PARAMS
        likely = PARAM_HINTS.get(name, pool[:3])
        out[name] = rng.choice(likely) if rng.random() < 0.7 else rng.choice(pool)
    return out


def _path(route: APIRoute, rng: random.Random) -> str:
    values = _param_values(route, rng)
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: values[m.group(1)], route.path)


def defaults_of(route: APIRoute, values: dict[str, dict[str, str]]) -> tuple[str, dict[str, str]] | None:
    """A real form of the pages posting to this route: its action and its values."""
    for action, found in sorted(values.items()):
        if route.path_regex.match(action):
            return action, dict(found)
    return None


def cases(
    route: APIRoute, forms: dict[str, set[str]], values: dict[str, dict[str, str]] | None = None
) -> Iterator[Case]:
    """The route's cases, the same every run."""
    rng = random.Random(f"{route.path} {route.name}")
    names = fields_of(route, forms)
    real = defaults_of(route, values or {})
    if real is not None:  # the page's own form, then that form with one field changed
        action, base = real
        base.pop("csrf_token", None)

        def changed(name: str, seed: str | bytes) -> Case:
            fields_ = [(k, seed if k == name else v) for k, v in base.items()]
            return Case(action, fields_, multipart=isinstance(seed, bytes))

        yield Case(action, list(base.items()))
        # A field the page fills with a number gets the numbers JSON cannot carry.
        numeric = [k for k, v in base.items() if NUMBER_RE.fullmatch(v)][:4]
        for name in numeric:
            for seed in ("nan", "-inf", "1e999"):
                yield changed(name, seed)
        for name in rng.sample(sorted(base), min(6, len(base))):
            seeds: list[str | bytes] = [*TEXT_SEEDS, *BYTE_SEEDS]
            yield changed(name, rng.choice(seeds))
    yield Case(_path(route, rng))  # no field at all
    yield Case(_path(route, rng), [(n, "") for n in names])
    for seed in rng.sample(TEXT_SEEDS, 8):
        yield Case(_path(route, rng), [(n, seed) for n in names])
    for raw in BYTE_SEEDS:
        yield Case(_path(route, rng), [(n, raw) for n in names], multipart=True)
    yield Case(_path(route, rng), [(n, "x") for n in names], files=[(n, b"\x00" * 1000) for n in names[:5]],
               multipart=True)
    while True:
        picked = [n for n in names if rng.random() < 0.7]
        fields_: list[tuple[str, str | bytes]] = [(n, rng.choice(TEXT_SEEDS)) for n in picked]
        fields_ += [(rng.choice(names), rng.choice(TEXT_SEEDS)) for _ in range(rng.randint(0, 3))]  # repeats
        yield Case(_path(route, rng), fields_, multipart=rng.random() < 0.3)


def multipart_body(case: Case, csrf: str) -> tuple[bytes, str]:
    boundary = "fuzz-boundary-7d3f"
    parts: list[tuple[bytes, bytes, bytes | None]] = [(b"csrf_token", csrf.encode(), None)]
    for name, value in case.fields:
        raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
        parts.append((name.encode(), raw, None))
    for name, data in case.files:
        parts.append((name.encode(), data, b"fuzz.bin"))
    out = b""
    for part, content, filename in parts:
        out += b"--" + boundary.encode() + b"\r\n"
        disposition = b'Content-Disposition: form-data; name="' + part + b'"'
        if filename:
            disposition += b'; filename="' + filename + b'"\r\nContent-Type: application/octet-stream'
        out += disposition + b"\r\n\r\n" + content + b"\r\n"
    out += b"--" + boundary.encode() + b"--\r\n"
    return out, f"multipart/form-data; boundary={boundary}"


def urlencoded_body(case: Case, csrf: str) -> bytes:
    from urllib.parse import quote_plus

    pairs = [("csrf_token", csrf)] + [(k, v) for k, v in case.fields if isinstance(v, str)]
    return "&".join(
        f"{quote_plus(k)}={quote_plus(v.encode('utf-8', 'surrogatepass'))}" for k, v in pairs
    ).encode()
