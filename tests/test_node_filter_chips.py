"""The Reserve page's filter chips (webui/node_filters.parse_chips): what is not a list of chips is
called malformed, and only a list that is too long is told the limit (a fresh-eyes try sent
`filters=null` and was told "at most 32 filters")."""

from __future__ import annotations

import pytest

from piseduce.webui.node_filters import MAX_FILTERS, parse_chips


@pytest.mark.parametrize("text", ["null", "{}", '"memory>=4G"', "3", "true", "[1]", "[null]", "{", "[[]]"])
def test_what_is_not_a_list_of_chips_is_malformed(text: str) -> None:
    with pytest.raises(ValueError, match="^the filters are malformed$"):
        parse_chips(text)


def test_too_many_chips_are_told_the_limit() -> None:
    chips = ",".join('{"prop": "model", "op": "=", "value": "RPI4B"}' for _ in range(MAX_FILTERS + 1))
    with pytest.raises(ValueError, match=f"^at most {MAX_FILTERS} filters$"):
        parse_chips(f"[{chips}]")


def test_no_chips_and_a_few_chips_are_read() -> None:
    assert parse_chips("") == [] and parse_chips("[]") == []
    assert len(parse_chips('[{"prop": "model", "op": "=", "value": "RPI4B"}]')) == 1
