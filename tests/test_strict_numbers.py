"""Numbers written as text are read strictly, in the agent API and in the web UI's forms (issue 11
follow-up): Python's int()/float() and pydantic's lax mode read "1_0" as 10, float() reads "nan",
"inf" and fullwidth digits, "-0" slips through a ">= 0" check, and a field cut at its limit is
passed on cut. Each is refused in words and changes nothing."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.agent_helpers import ADMIN, headers, node_body
from helpers.switch_fixtures import Ports
from piseduce.agent.drivers.raspberry.snmp import SwitchInfo
from piseduce.numbers import parse_decimal, parse_int, parse_number, read_decimal

ALICE = headers("alice@example.org")
LOOSE = ("1_0", "１０", "١٠", "1e1", "0x10", "ten", "nan", "NaN", "inf", "-Infinity", "1e999", "")


def test_the_parser_reads_digits_and_nothing_else() -> None:
    assert parse_int("42") == 42 and parse_int("+3") == 3
    # Exactly, unless typed by hand in a form: then the spaces around it (only spaces) are dropped.
    assert parse_int(" 7 ", hand_typed=True) == 7 and parse_decimal("  0.5 ", hand_typed=True) == 0.5
    for text in (" 7 ", "7 ", "2\n", "\t2", "2\r\n", "\u00a02", "2\u2003"):
        for parse in (parse_int, parse_decimal, parse_number):
            with pytest.raises(ValueError, match="without spaces or line breaks around it"):
                parse(text)
        assert read_decimal(text) is None
    for text in ("2\n", " 2\n", "\t2", "2\r", "\u00a02"):
        with pytest.raises(ValueError, match="without line breaks or tabs around it"):
            parse_int(text, hand_typed=True)
    assert parse_decimal("0.5") == 0.5 and parse_decimal("2") == 2.0 and parse_decimal(".25") == 0.25
    assert parse_number("2") == 2 and isinstance(parse_number("2"), int) and parse_number("1.5") == 1.5
    for text in LOOSE:
        for parse in (parse_int, parse_decimal, parse_number):
            with pytest.raises(ValueError, match="expected"):
                parse(text)
        assert read_decimal(text) is None
    with pytest.raises(ValueError, match="a finite number is expected"):
        parse_number("nan")
    with pytest.raises(ValueError, match="without an exponent"):
        parse_decimal("1e3")
    with pytest.raises(ValueError, match="without a minus sign"):
        parse_decimal("-0", lo=0)
    with pytest.raises(ValueError, match="from 1 to 1000 is expected, not 0"):
        parse_int("0", lo=1, hi=1000)
    with pytest.raises(ValueError, match="fewer digits"):
        parse_int("9" * 100_000)


@pytest.mark.parametrize("text", ["9" * 1_000_000, "9" * 1_000_000 + "x", "1." + "0" * 1_000_000 + "e",
                                  "." * 1_000_000, "+" + "9" * 500_000 + "." + "9" * 500_000 + "-"])
def test_a_megabyte_of_digits_is_refused_at_once(text: str) -> None:
    """Refusing a huge text costs time linear in its length: the exponent check backtracked
    quadratically (100,000 digits took 50 s of CPU, a request body of them far longer). The bound
    is 100 times what a linear pass takes here, and a millionth of the quadratic time."""
    for parse in (parse_int, parse_decimal, parse_number):
        t0 = time.process_time()
        with pytest.raises(ValueError, match="expected"):
            parse(text)
        assert time.process_time() - t0 < 2.0, parse.__name__
    assert parse_decimal("-0.5", lo=-1) == -0.5


# ---------------------------------------------------------------- the agent API


async def _reservations(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    r = await client.get("/api/reservations", headers=ALICE)
    assert r.status_code == 200, r.text
    return list(r.json())


async def test_agent_booking_numbers_as_text_are_read_strictly(
    client: httpx.AsyncClient, nodes: list[str]
) -> None:
    for text in LOOSE:
        for body in (
            {"filters": [{"count": 1}], "duration_hours": text},
            {"filters": [{"count": text}], "duration_hours": 1},
            {"filters": [{"count": 1, "properties": {"memory_gb": {"min": text}}}], "duration_hours": 1},
        ):
            r = await client.post("/api/reservations", json=body, headers=ALICE)
            assert r.status_code == 422, (body, r.text)
            assert "expected" in r.text or "needed" in r.text, (body, r.text)
    assert await _reservations(client) == []
    # "1_0" is not 10 as a property value either: no node has memory_gb "1_0" (they have 4 and 1).
    r = await client.post(
        "/api/reservations",
        json={"filters": [{"count": 1, "properties": {"memory_gb": "0_4"}}], "duration_hours": 1},
        headers=ALICE,
    )
    assert r.status_code == 409, r.text
    # Numbers as digits still work, as JSON numbers or as text.
    r = await client.post(
        "/api/reservations", json={"filters": [{"count": "2"}], "duration_hours": "1.5"}, headers=ALICE
    )
    assert r.status_code == 201, r.text
    booked = await _reservations(client)
    assert len(booked) == 2
    start, end = (dt.datetime.fromisoformat(booked[0][k]) for k in ("start", "end"))
    assert end - start == dt.timedelta(hours=1.5)
    # Query and path numbers: ?limit=0_1 is not 1, /reservations/0_1 is not reservation 1.
    r = await client.get("/api/reservations?limit=0_1", headers=ALICE)
    assert r.status_code == 422, r.text
    rid = booked[-1]["id"]
    for text in (f"0_{rid}", f"{rid}".translate(str.maketrans("0123456789", "０１２３４５６７８９"))):
        r = await client.get(f"/api/reservations/{text}", headers=ALICE)
        assert r.status_code == 422, (text, r.text)


async def test_agent_extend_by_minus_zero_is_refused(client: httpx.AsyncClient, nodes: list[str]) -> None:
    r = await client.post(
        "/api/reservations", json={"filters": [{"count": 1}], "duration_hours": 2}, headers=ALICE
    )
    assert r.status_code == 201, r.text
    (before,) = await _reservations(client)
    # "-0" meant 0, and 0 extends by the reservation's own length: two more hours asked by no one.
    for hours in (-0.0, "-0", "-0.0", "nan", "inf", "1_0"):
        r = await client.post(
            f"/api/reservations/{before['id']}/extend", json={"hours": hours}, headers=ALICE
        )
        assert r.status_code == 422, (hours, r.text)
    (after,) = await _reservations(client)
    assert after["end"] == before["end"]
    r = await client.post(f"/api/reservations/{before['id']}/extend", json={"hours": "1"}, headers=ALICE)
    assert r.status_code == 202, r.text


async def test_agent_admin_numbers_as_text(
    api: tuple[httpx.AsyncClient, Ports, SwitchInfo, Path],  # noqa: F811
) -> None:
    client, ports, sw, _ = api
    body = {
        "name": "sw1",
        "ip": "127.0.0.1",
        "snmp_port": sw.snmp_port,
        "community": "s3cret",
        "port_count": 5,
        "master_port": 5,
    }
    for field in ("snmp_port", "port_count", "master_port", "oid_offset"):
        r = await client.post("/api/admin/switches", json={**body, field: "0_5"}, headers=ADMIN)
        assert r.status_code == 422, (field, r.text)
    r = await client.post("/api/admin/switches", json={**body, "poe_oid": "１.３.６.１"}, headers=ADMIN)
    assert r.status_code == 422, r.text
    r = await client.post("/api/admin/switches", json=body, headers=ADMIN)
    assert r.status_code == 201, r.text
    ports.on[3] = True
    # Port "0_3" was port 3: its power was cut.
    for text in ("0_3", "３", "3.0"):
        r = await client.post(f"/api/admin/switches/sw1/ports/{text}/off", headers=ADMIN)
        assert r.status_code == 422, (text, r.text)
    assert ports.on[3]
    r = await client.post(
        "/api/admin/nodes", json={**node_body("pi-1"), "switch": "sw1", "port": "0_2"}, headers=ADMIN
    )
    assert r.status_code == 422, r.text


async def test_agent_numbers_as_text_have_no_spaces_around_them(
    client: httpx.AsyncClient, nodes: list[str]
) -> None:
    """ " 5 " and "2\n" were read as 5 and 2 in JSON strings, paths and query strings."""
    for text in (" 1 ", "1\n", "\t1", " 1"):
        for body in (
            {"filters": [{"count": 1}], "duration_hours": text},
            {"filters": [{"count": text}], "duration_hours": 1},
            {"filters": [{"count": 1, "properties": {"memory_gb": {"min": text}}}], "duration_hours": 1},
        ):
            r = await client.post("/api/reservations", json=body, headers=ALICE)
            assert r.status_code == 422, (body, r.text)
            assert "without spaces or line breaks around it" in r.text, r.text
    assert await _reservations(client) == []
    r = await client.post("/api/reservations", json={"filters": [{"count": 1}], "duration_hours": 1},
                          headers=ALICE)
    assert r.status_code == 201, r.text
    rid = (await _reservations(client))[0]["id"]
    for text in (f"%20{rid}%20", f"{rid}%0A", f"%09{rid}", f"{rid}%20"):
        r = await client.get(f"/api/reservations/{text}", headers=ALICE)
        assert r.status_code == 422, (text, r.text)
        r = await client.post(f"/api/reservations/{text}/extend", json={"hours": 1}, headers=ALICE)
        assert r.status_code == 422, (text, r.text)
        r = await client.get(f"/api/reservations?limit={text}", headers=ALICE)
        assert r.status_code == 422, (text, r.text)
    for hours in (" 1 ", "1\n"):
        r = await client.post(f"/api/reservations/{rid}/extend", json={"hours": hours}, headers=ALICE)
        assert r.status_code == 422, (hours, r.text)
    assert (await client.get(f"/api/reservations/{rid}", headers=ALICE)).status_code == 200
