"""The calendar's generation counter (models.CalendarGeneration), kept by database triggers.

Triggers rather than application code: reservations and nodes are written by the booking, the
engine, the API's routes and bulk statements, in several processes; a trigger sees every one of
them, in the writer's own transaction. An update bumps the counter only when a column the calendar
shows changes (the engine's progress writes leave it alone).

SQLite's `batch_alter_table` recreates a table without its triggers: a migration that batch-alters
`reservations` or `nodes` must call `install` again.
"""

from __future__ import annotations

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

# The columns whose change alters the calendar.
RESERVATION_COLUMNS = ("node_name", "owner", "start", "end", "busy_until", "status")
NODE_COLUMNS = ("name", "present")
BUMP = "UPDATE calendar_generation SET n = n + 1"


def _changed(columns: tuple[str, ...], differ: str) -> str:
    return " OR ".join(f'OLD."{c}" {differ} NEW."{c}"' for c in columns)


def _sqlite() -> list[str]:
    out = []
    for table, columns in (("reservations", RESERVATION_COLUMNS), ("nodes", NODE_COLUMNS)):
        for what in ("INSERT", "DELETE"):
            out.append(
                f"CREATE TRIGGER calendar_{table}_{what.lower()} AFTER {what} ON {table} BEGIN {BUMP}; END"
            )
        out.append(
            f"CREATE TRIGGER calendar_{table}_update AFTER UPDATE ON {table} "
            f"WHEN {_changed(columns, 'IS NOT')} BEGIN {BUMP}; END"
        )
    return out


def _postgresql() -> list[str]:
    out = [
        "CREATE OR REPLACE FUNCTION calendar_generation_bump() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN {BUMP}; RETURN NULL; END $$"
    ]
    for table, columns in (("reservations", RESERVATION_COLUMNS), ("nodes", NODE_COLUMNS)):
        # Once per statement: a bulk insert bumps the counter once.
        out.append(
            f"CREATE TRIGGER calendar_{table}_insert_delete AFTER INSERT OR DELETE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION calendar_generation_bump()"
        )
        out.append(
            f"CREATE TRIGGER calendar_{table}_update AFTER UPDATE ON {table} FOR EACH ROW "
            f"WHEN ({_changed(columns, 'IS DISTINCT FROM')}) EXECUTE FUNCTION calendar_generation_bump()"
        )
    return out


def _drops(dialect: str) -> list[str]:
    tables = ("reservations", "nodes")
    if dialect == "postgresql":
        return [
            f"DROP TRIGGER IF EXISTS calendar_{t}_{w} ON {t}"
            for t in tables
            for w in ("insert_delete", "update")
        ] + ["DROP FUNCTION IF EXISTS calendar_generation_bump()"]
    return [
        f"DROP TRIGGER IF EXISTS calendar_{t}_{w}" for t in tables for w in ("insert", "delete", "update")
    ]


def install(conn: Connection) -> None:
    """(Re)create the triggers and the counter's row (at 0 when it was missing)."""
    dialect = conn.dialect.name
    for statement in _drops(dialect):
        conn.execute(text(statement))
    for statement in _postgresql() if dialect == "postgresql" else _sqlite():
        conn.execute(text(statement))
    if conn.execute(text("SELECT count(*) FROM calendar_generation")).scalar() == 0:
        conn.execute(text("INSERT INTO calendar_generation (id, n) VALUES (1, 0)"))


def uninstall(conn: Connection) -> None:
    for statement in _drops(conn.dialect.name):
        conn.execute(text(statement))


def current(session: Session) -> int | None:
    """The counter now; None when its row is missing (then nothing may be cached)."""
    value = session.execute(text("SELECT n FROM calendar_generation WHERE id = 1")).scalar()
    return None if value is None else int(value)


def after_create(target: object, connection: Connection, **kw: object) -> None:
    """Databases made by create_all (some tests) get the triggers the migration installs."""
    if connection.dialect.has_table(connection, "calendar_generation"):
        install(connection)
