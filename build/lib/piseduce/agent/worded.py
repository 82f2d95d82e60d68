"""String types whose refusals are sentences, not regular expressions.

A pattern constraint answers "String should match pattern '^([0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5})?$'",
which tells an operator nothing. `Words(pattern, words)` as `Annotated` metadata keeps the pattern
in the OpenAPI schema (clients and the schemathesis tests still see it) and refuses with words
that say what to type instead; every model and route that uses the type gets the same message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BeforeValidator, GetCoreSchemaHandler, GetJsonSchemaHandler, StringConstraints
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema


@dataclass(frozen=True)
class Words:
    """The value must fully match `pattern`; otherwise ValueError("'<value>' <words>")."""

    pattern: str
    words: str
    allow_empty: bool = False
    schema_pattern: str = ""  # what the OpenAPI schema shows, when more lenient than `pattern`
    rx: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rx", re.compile(self.pattern))

    def check(self, value: str) -> str:
        if (self.allow_empty and value == "") or self.rx.fullmatch(value):
            return value
        shown = value if len(value) <= 40 else value[:40] + "…"
        raise ValueError(f"{shown!r} {self.words}" if value else f"empty: {self.words}")

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        out = handler(schema)
        out["pattern"] = self.schema_pattern or self.pattern
        return out


MAC_PATTERN = r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$"


def _normal_mac(value: Any) -> Any:
    """dc-a6-32-01-02-03, DC:A6:32:01:02:03 and dca6.3201.0203 are one MAC: dc:a6:32:01:02:03."""
    if not isinstance(value, str):
        return value
    text = value.strip().lower()
    digits = re.sub(r"[:\-.]", "", text)
    if re.fullmatch(r"[0-9a-f]{12}", digits) and re.fullmatch(r"[0-9a-f:.\-]+", text):
        return ":".join(digits[i:i + 2] for i in range(0, 12, 2))
    return text


# "" = not given.
Mac = Annotated[
    str,
    BeforeValidator(_normal_mac),
    StringConstraints(max_length=64),
    Words(MAC_PATTERN, "is not a MAC address: write six pairs of hexadecimal digits separated by colons, "
                       "like dc:a6:32:01:02:03", allow_empty=True,
          schema_pattern=r"^([0-9A-Fa-f]{2}([:-]?[0-9A-Fa-f]{2}){5})?$"),
]


SERIAL_PATTERN = r"^[0-9a-f]{8}$"


def _normal_serial(value: Any) -> Any:
    """A Raspberry Pi's serial as its firmware names its TFTP folder: 8 lower-case hexadecimal
    digits. /proc/cpuinfo's 'Serial' has 16 (10000000 9ffefdef): the last 8 are the board's."""
    if not isinstance(value, str):
        return value
    text = value.strip().lower()
    return text[8:] if re.fullmatch(r"[0-9a-f]{16}", text) else text


# "" = not given.
Serial = Annotated[
    str,
    BeforeValidator(_normal_serial),
    StringConstraints(max_length=64),
    Words(SERIAL_PATTERN, "is not a board serial: a Raspberry Pi's serial is 8 hexadecimal digits "
                          "(the end of 'Serial' in /proc/cpuinfo, like 9ffefdef), or all 16 of them",
          allow_empty=True, schema_pattern=r"^([0-9A-Fa-f]{8}|[0-9A-Fa-f]{16})?$"),
]
