"""OAR's resource requests as users write them, and the choice of resources that satisfies one.

`{cluster='gros'}/nodes=1+{cluster='grisou'}/nodes=1,walltime=2:00` is two groups (each with its
own SQL filter and hierarchy) sharing one walltime. A hierarchy goes from the largest resource to
the smallest: `/cluster=1/nodes=2` (two nodes of one cluster), `/nodes=1/core=2` (two cores of
one node), `core=4` (four cores anywhere), `/switch=1/nodes=ALL`. A request that stops at the node
level or above gets whole nodes; `cpu` and `core` give parts of nodes, shared with other jobs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from piseduce.sim.g5k.oar import DEFAULT_WALLTIME, OarSyntaxError, parse_walltime

LEVELS = ("cluster", "switch", "host", "cpu", "core")  # largest first
ALIASES = {"nodes": "host", "node": "host", "network_address": "host", "host": "host"}
ALL, BEST = -1, -2  # the `ALL` and `BEST` counts


@dataclass(frozen=True)
class Level:
    name: str  # one of LEVELS
    count: int  # n >= 1, ALL or BEST


@dataclass
class Group:
    filter: str  # the `{...}` SQL, ANDed with the job's properties
    levels: list[Level]

    @property
    def whole_nodes(self) -> bool:
        return LEVELS.index(self.levels[-1].name) <= LEVELS.index("host")


@dataclass
class ResourceSpec:
    groups: list[Group]
    walltime: int

    @property
    def whole_nodes(self) -> bool:
        return all(g.whole_nodes for g in self.groups)


def _split(text: str, sep: str) -> list[str]:
    """Split on `sep` outside `{...}` and quotes."""
    parts, depth, quote, current = [], 0, False, ""
    for ch in text:
        if ch == "'" and depth:
            quote = not quote
        elif not quote and ch == "{":
            depth += 1
        elif not quote and ch == "}":
            depth -= 1
        if ch == sep and depth == 0 and not quote:
            parts.append(current)
            current = ""
        else:
            current += ch
    if depth or quote:
        raise OarSyntaxError(f"bad resource request {text!r}: unbalanced braces or quotes")
    parts.append(current)
    return parts


def _level(text: str, whole: str) -> Level:
    m = re.fullmatch(r"\s*([a-z_]+)\s*=\s*(\d+|ALL|BEST)\s*", text, re.I)
    if not m:
        raise OarSyntaxError(f"bad resource request {whole!r} near {text!r} (expected type=N)")
    kind = m.group(1).lower()
    name = ALIASES.get(kind, kind)
    if name not in LEVELS:
        raise OarSyntaxError(
            f"unknown resource type {kind!r} in {whole!r} (one of nodes, cluster, switch, cpu, core)"
        )
    raw = m.group(2).upper()
    count = ALL if raw == "ALL" else BEST if raw == "BEST" else int(raw)
    if count == 0:
        raise OarSyntaxError(f"bad resource request {whole!r}: {kind} must be at least 1")
    return Level(name, count)


def _group(text: str, whole: str) -> Group:
    s = text.strip()
    filt = ""
    m = re.match(r"^\{(.*)\}\s*", s, re.S)
    if m:
        filt, s = m.group(1).strip(), s[m.end():]
    steps = [p for p in s.split("/") if p.strip()]
    levels = [_level(p, whole) for p in steps] or [Level("host", 1)]
    ranks = [LEVELS.index(lv.name) for lv in levels]
    if ranks != sorted(set(ranks)):
        raise OarSyntaxError(
            f"bad resource hierarchy {whole!r}: go from the largest resource to the smallest "
            f"({' > '.join(LEVELS)}), each once"
        )
    return Group(filt, levels)


def parse_request(text: str | None) -> ResourceSpec:
    s = (text or "nodes=1").strip()
    walltime = DEFAULT_WALLTIME
    pieces = _split(s, ",")
    resources = []
    for piece in pieces:
        m = re.fullmatch(r"\s*walltime\s*=\s*([0-9:]+)\s*", piece)
        if m:
            walltime = parse_walltime(m.group(1))
        elif piece.strip():
            resources.append(piece)
    if len(resources) != 1:
        raise OarSyntaxError(f"bad resource request {text!r} (expected e.g. nodes=2,walltime=1:30)")
    groups = [_group(g, s) for g in _split(resources[0], "+")]
    return ResourceSpec(groups, walltime)


# ---------------------------------------------------------------- choosing resources


@dataclass
class Host:
    fqdn: str
    cluster: str
    switch: str
    procs: int
    cores: int
    free: int  # cores free during the wanted interval

    @property
    def per_cpu(self) -> int:
        return max(self.cores // max(self.procs, 1), 1)


Allocation = dict[str, int]  # host FQDN → cores


@dataclass
class _Pool:
    hosts: list[Host]
    taken: Allocation = field(default_factory=dict)

    def free(self, h: Host) -> int:
        return h.free - self.taken.get(h.fqdn, 0)


def _count(level: Level, available: int) -> int | None:
    """How many of `available` units a level takes, None when it cannot be satisfied."""
    if level.count == ALL:
        return available if available else None
    if level.count == BEST:
        return available or None
    return level.count if available >= level.count else None


def _in_host(h: Host, free: int, levels: list[Level]) -> int | None:
    """Cores to take on one host for the levels below `host`; None when they do not fit."""
    if not levels:
        return h.cores if free == h.cores else None  # a whole node
    top, rest = levels[0], levels[1:]
    if top.name == "cpu":
        cpus = free // h.per_cpu
        n = _count(top, cpus)
        if n is None:
            return None
        if not rest:
            return n * h.per_cpu
        per = _count(rest[0], h.per_cpu)
        return None if per is None else n * per
    n = _count(top, free)  # core
    return n


def _hosts(pool: _Pool, hosts: list[Host], level: Level, rest: list[Level]) -> Allocation | None:
    fits = []
    for h in hosts:
        cores = _in_host(h, pool.free(h), rest)
        if cores:
            fits.append((h, cores))
    if level.count == ALL and len(fits) < len(hosts):
        return None
    n = _count(level, len(fits))
    if n is None:
        return None
    return {h.fqdn: c for h, c in fits[:n]}


def _cores(pool: _Pool, hosts: list[Host], level: Level, rest: list[Level]) -> Allocation | None:
    """`cpu=N` or `core=N` across hosts: filled host after host, in order."""
    unit = {h.fqdn: (h.per_cpu if level.name == "cpu" else 1) for h in hosts}
    total = sum(pool.free(h) // unit[h.fqdn] for h in hosts)
    n = _count(level, total)
    if n is None:
        return None
    out: Allocation = {}
    for h in hosts:
        if n <= 0:
            break
        take = min(n, pool.free(h) // unit[h.fqdn])
        if take:
            out[h.fqdn] = take * unit[h.fqdn]
            n -= take
    del rest  # the levels below cpu (core) were counted in the unit
    return out


def _allocate(pool: _Pool, hosts: list[Host], levels: list[Level]) -> Allocation | None:
    level, rest = levels[0], levels[1:]
    if level.name in ("cpu", "core"):
        return _cores(pool, hosts, level, rest)
    if level.name == "host":
        return _hosts(pool, hosts, level, rest)
    attr: Callable[[Host], str] = (lambda h: h.cluster) if level.name == "cluster" else (lambda h: h.switch)
    groups: dict[str, list[Host]] = {}
    for h in hosts:
        groups.setdefault(attr(h), []).append(h)
    below = rest or [Level("host", ALL)]
    found = [a for a in (_allocate(pool, members, below) for members in groups.values()) if a]
    if level.count == ALL and len(found) < len(groups):
        return None
    n = _count(level, len(found))
    if n is None:
        return None
    out: Allocation = {}
    for a in found[:n]:
        out.update(a)
    return out


def choose(
    spec: ResourceSpec, candidates: Mapping[int, list[Host]]
) -> Allocation | None:
    """Resources for every group (group i picks among candidates[i]); a host may serve several
    groups only with cores of it that are still free. None when the request cannot be met."""
    pool = _Pool([h for hosts in candidates.values() for h in hosts])
    for i, group in enumerate(spec.groups):
        got = _allocate(pool, candidates.get(i, []), group.levels)
        if not got:
            return None
        for fqdn, cores in got.items():
            pool.taken[fqdn] = pool.taken.get(fqdn, 0) + cores
    return dict(pool.taken)
