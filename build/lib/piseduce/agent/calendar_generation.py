"""The calendar's generation counter (models.CalendarGeneration) and the spans each generation
changed (models.CalendarChange), kept by database triggers.

Triggers rather than application code: reservations and nodes are written by the booking, the
engine, the API's routes and bulk statements, in several processes; a trigger sees every one of
them, in the writer's own transaction. An update bumps the counter only when a column the calendar
shows changes (the engine's progress writes leave it alone).

Every bump writes at least one row to calendar_changes with the new counter: the booking's node
and span (start, busy_until), before and after for an update, or a node's name and NULL times for
its own change. A worker's cache at generation G asks for the rows after G and re-reads only those nodes'
slots in the days they overlap (changes_since); the rows are complete when the first is G + 1.
Every PRUNE_EVERY generations the counter's own trigger deletes the rows older than KEEP
generations, so the table stays small; a cache further behind reads everything again.

SQLite's `batch_alter_table` recreates a table without its triggers: a migration that batch-alters
`reservations` or `nodes` must call `install` again.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

from piseduce.dbtypes import to_utc

# The columns whose change alters the calendar.
RESERVATION_COLUMNS = ("node_name", "owner", "start", "end", "busy_until", "status")
NODE_COLUMNS = ("name", "present")
BUMP = "UPDATE calendar_generation SET n = n + 1"
KEEP = 4096  # generations of changes kept
PRUNE_EVERY = 256
_INTO = 'INSERT INTO calendar_changes (generation, node, start, "end")'
_COUNTER = "FROM calendar_generation WHERE id = 1"
_NOW = f"SELECT n {_COUNTER}"
_SET = "g IS NOT NULL"  # the counter's row exists
_TABLES = ("reservations", "nodes")
_SQLITE_EVENTS = ("insert", "delete", "update")
_ORDER = "ORDER BY generation"


def _changed(columns: tuple[str, ...], differ: str) -> str:
    return " OR ".join(f'OLD."{c}" {differ} NEW."{c}"' for c in columns)


# What a row's change records: the node and the span it holds; a node's, all its time (NULLs).
_RECORDED = {"reservations": ("node_name", "start", "busy_until"), "nodes": ("name", None, None)}


def _row(table: str, prefix: str) -> str:
    return ", ".join(f"{prefix}.{c}" if c else "NULL" for c in _RECORDED[table])


def _moved(table: str, differ: str) -> str:
    return " OR ".join(f"NEW.{c} {differ} OLD.{c}" for c in _RECORDED[table] if c)


def _sqlite_spans(table: str, what: str) -> str:
    """The statements after a row's bump that record what it changed, at the new generation."""
    if what == "UPDATE":
        return (
            f"{_INTO} SELECT n, {_row(table, 'OLD')} {_COUNTER}; "
            f"{_INTO} SELECT n, {_row(table, 'NEW')} {_COUNTER} AND ({_moved(table, 'IS NOT')});"
        )
    return f"{_INTO} SELECT n, {_row(table, 'OLD' if what == 'DELETE' else 'NEW')} {_COUNTER};"


def _prune(new_n: str) -> str:
    return f"DELETE FROM calendar_changes WHERE generation < {new_n} - {KEEP}"


def _sqlite(spans: bool) -> list[str]:
    out = []
    for table, columns in (("reservations", RESERVATION_COLUMNS), ("nodes", NODE_COLUMNS)):
        for what in ("INSERT", "DELETE", "UPDATE"):
            when = f" WHEN {_changed(columns, 'IS NOT')}" if what == "UPDATE" else ""
            record = _sqlite_spans(table, what) if spans else ""
            out.append(
                f"CREATE TRIGGER calendar_{table}_{what.lower()} AFTER {what} ON {table}{when} "
                f"BEGIN {BUMP}; {record} END"
            )
    if spans:
        out.append(
            "CREATE TRIGGER calendar_changes_prune AFTER UPDATE ON calendar_generation "
            f"WHEN NEW.n % {PRUNE_EVERY} = 0 BEGIN {_prune('NEW.n')}; END"
        )
    return out


def _pg_function(name: str, body: str) -> str:
    return (
        f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ DECLARE g bigint; BEGIN {body} RETURN NULL; END $$"
    )


def _pg_functions(spans: bool) -> list[str]:
    if not spans:
        return [_pg_function("calendar_generation_bump", f"{BUMP};")]
    bump = f"{BUMP} RETURNING n INTO g;"
    out = [
        _pg_function("calendar_changes_prune", f"{_prune('NEW.n')};"),
        "CREATE TRIGGER calendar_changes_prune AFTER UPDATE ON calendar_generation FOR EACH ROW "
        f"WHEN (NEW.n % {PRUNE_EVERY} = 0) EXECUTE FUNCTION calendar_changes_prune()",
    ]
    for table in _TABLES:
        out += [
            # Statement-level, over the statement's rows (`changed`): a bulk insert bumps once.
            _pg_function(
                f"calendar_{table}_changed",
                f"IF NOT EXISTS (SELECT 1 FROM changed) THEN RETURN NULL; END IF; {bump} "
                f"{_INTO} SELECT g, {_row(table, 'changed')} FROM changed WHERE {_SET};",
            ),
            _pg_function(
                f"calendar_{table}_updated",
                f"{bump} {_INTO} SELECT g, {_row(table, 'OLD')} WHERE {_SET}; "
                f"{_INTO} SELECT g, {_row(table, 'NEW')} WHERE {_SET} "
                f"AND ({_moved(table, 'IS DISTINCT FROM')});",
            ),
        ]
    return out


def _postgresql(spans: bool) -> list[str]:
    out = _pg_functions(spans)
    for table, columns in (("reservations", RESERVATION_COLUMNS), ("nodes", NODE_COLUMNS)):
        if spans:
            # Transition tables need one trigger per event.
            for what, rows in (("insert", "NEW"), ("delete", "OLD")):
                out.append(
                    f"CREATE TRIGGER calendar_{table}_{what} AFTER {what.upper()} ON {table} "
                    f"REFERENCING {rows} TABLE AS changed FOR EACH STATEMENT "
                    f"EXECUTE FUNCTION calendar_{table}_changed()"
                )
        else:
            # Once per statement: a bulk insert bumps the counter once.
            out.append(
                f"CREATE TRIGGER calendar_{table}_insert_delete AFTER INSERT OR DELETE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION calendar_generation_bump()"
            )
        update = f"calendar_{table}_updated" if spans else "calendar_generation_bump"
        out.append(
            f"CREATE TRIGGER calendar_{table}_update AFTER UPDATE ON {table} FOR EACH ROW "
            f"WHEN ({_changed(columns, 'IS DISTINCT FROM')}) EXECUTE FUNCTION {update}()"
        )
    return out


def _drops(dialect: str) -> list[str]:
    if dialect == "postgresql":
        triggers = [
            f"DROP TRIGGER IF EXISTS calendar_{t}_{w} ON {t}"
            for t in _TABLES
            for w in ("insert_delete", "insert", "delete", "update")
        ]
        functions = (
            "calendar_generation_bump",
            *(f"calendar_{t}_{w}" for t in _TABLES for w in ("changed", "updated")),
        )
        return [
            *triggers,
            "DROP TRIGGER IF EXISTS calendar_changes_prune ON calendar_generation",
            "DROP FUNCTION IF EXISTS calendar_changes_prune()",
            *(f"DROP FUNCTION IF EXISTS {f}()" for f in functions),
        ]
    return [
        *(f"DROP TRIGGER IF EXISTS calendar_{t}_{w}" for t in _TABLES for w in _SQLITE_EVENTS),
        "DROP TRIGGER IF EXISTS calendar_changes_prune",
    ]


def install(conn: Connection, spans: bool = True) -> None:
    """(Re)create the triggers and the counter's row (at 0 when it was missing); `spans`: the
    triggers also write calendar_changes (migration 0009 made the table; 0006 installs without)."""
    dialect = conn.dialect.name
    for statement in _drops(dialect):
        conn.execute(text(statement))
    for statement in _postgresql(spans) if dialect == "postgresql" else _sqlite(spans):
        conn.execute(text(statement))
    if conn.execute(text("SELECT count(*) FROM calendar_generation")).scalar() == 0:
        conn.execute(text("INSERT INTO calendar_generation (id, n) VALUES (1, 0)"))


def uninstall(conn: Connection) -> None:
    for statement in _drops(conn.dialect.name):
        conn.execute(text(statement))


def current(session: Session) -> int | None:
    """The counter now; None when its row is missing (then nothing may be cached)."""
    value = session.execute(text(_NOW)).scalar()
    return None if value is None else int(value)


# A change: (node, start, busy_until) of a booking before or after it; a node's: all its time.
Change = tuple[str, dt.datetime, dt.datetime]
ALWAYS = (dt.datetime.min.replace(tzinfo=dt.UTC), dt.datetime.max.replace(tzinfo=dt.UTC))


@dataclass(frozen=True)
class Changes:
    """What changed after a generation: the newest generation seen, the bookings' spans before
    and after each change, whether a node changed (added, removed, renamed, present or not: its
    span is ALWAYS); `everything`: the rows since were pruned."""

    generation: int
    spans: list[Change]
    nodes: bool
    everything: bool


def changes_since(session: Session, generation: int) -> Changes | None:
    """The spans changed after `generation`, read in one statement (one snapshot: the newest
    generation seen and its rows agree); None when nothing changed."""
    rows = session.execute(
        text(f'SELECT generation, node, start, "end" FROM calendar_changes WHERE generation > :g {_ORDER}'),
        {"g": generation},
    ).all()
    if not rows:
        return None
    spans: list[Change] = []
    everything = int(rows[0][0]) != generation + 1
    nodes = False
    for _, node, a, b in rows:
        if node is None:  # not written by these triggers: nothing is known
            everything = True
        elif a is None or b is None:
            nodes = True
            spans.append((node, *ALWAYS))
        else:
            spans.append((node, _utc(a), _utc(b)))
    return Changes(int(rows[-1][0]), spans, nodes, everything)


def _utc(value: dt.datetime | str) -> dt.datetime:
    """SQLite hands a text() query's times back as the stored text, naive UTC."""
    return to_utc(dt.datetime.fromisoformat(value) if isinstance(value, str) else value)


def after_create(target: object, connection: Connection, **kw: object) -> None:
    """Databases made by create_all (some tests) get the triggers the migration installs."""
    if connection.dialect.has_table(connection, "calendar_generation"):
        install(connection, spans=connection.dialect.has_table(connection, "calendar_changes"))
