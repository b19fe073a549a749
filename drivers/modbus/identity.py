"""Identity registers: where a meter says what model it is, and what it says for each model.

A register map may carry an `identity:` list (drivers/modbus/registers/SCHEMA.md). Each entry
names one register read *on its own* (exactly `address`, `words` long: some meters answer an
identity read at an address that, read as part of a wider block, belongs to a measured value)
and the values it holds on the models the map serves. `meter-gateway scan` reads them before
guessing from plausibility: every entry matching means the model is *identified*; an entry that
answers with data that matches none of its values rules the map out; a timeout or an exception
says nothing either way (older firmware may lack the register)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

IdentityType = Literal["u16", "u32", "text"]
#: Registers per integer identity type (text gives its own `words`).
_INT_WORDS = {"u16": 1, "u32": 2}
MAX_TEXT_WORDS = 64


class IdentityCheck(BaseModel):
    """One identity register and the values it holds on this map's models."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    table: Literal["input", "holding"]
    address: int = Field(ge=0, le=0xFFFF)
    #: u16 / u32 (big-endian words): the value is one of `values` exactly.
    #: text: ASCII, two characters per register, high byte first; NULs and spaces trimmed;
    #: matches when it contains one of `values` (case-insensitive), e.g. "iEM3255" in
    #: "Acti9 iEM3255".
    type: IdentityType = "u16"
    #: Registers to read for `text` (ignored for integers, which know their width).
    words: int | None = Field(default=None, ge=1, le=MAX_TEXT_WORDS)
    values: tuple[int | str, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _values_fit_the_type(self) -> IdentityCheck:
        if self.type == "text":
            if self.words is None:
                raise ValueError("a text identity needs `words` (registers to read)")
            for value in self.values:
                if not isinstance(value, str) or not value.strip():
                    raise ValueError("a text identity's values are non-empty strings")
                if len(value.encode("ascii", "replace")) > 2 * self.words:
                    raise ValueError(f"{value!r} does not fit in {self.words} register(s)")
            return self
        if self.words is not None and self.words != _INT_WORDS[self.type]:
            raise ValueError(f"a {self.type} is {_INT_WORDS[self.type]} register(s) wide")
        limit = 1 << (16 * _INT_WORDS[self.type])
        for value in self.values:
            if isinstance(value, str) or not 0 <= value < limit:
                raise ValueError(f"{value!r} is not a {self.type} value")
        return self

    @property
    def count(self) -> int:
        """Registers one read of this identity fetches."""
        return self.words if self.type == "text" and self.words else _INT_WORDS[self.type]

    def decode(self, words: Sequence[int]) -> int | str:
        if self.type == "text":
            raw = b"".join(w.to_bytes(2, "big") for w in words)
            return raw.decode("ascii", "replace").strip("\x00 ").replace("\x00", "")
        value = 0
        for word in words:
            value = value << 16 | word
        return value

    def matches(self, words: Sequence[int]) -> bool:
        found = self.decode(words)
        if isinstance(found, str):
            return any(str(v).lower() in found.lower() for v in self.values)
        return found in self.values

    def encode(self, value: int | str | None = None) -> list[int]:
        """The registers of a device of this model (first listed value by default)."""
        value = self.values[0] if value is None else value
        if isinstance(value, str):
            raw = value.encode("ascii").ljust(2 * self.count, b"\x00")
            return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
        return [(value >> (16 * i)) & 0xFFFF for i in reversed(range(self.count))]

    def describe(self, words: Sequence[int] | None = None) -> str:
        """'holding 0xFC02 = 0x0070' (what was read) or '... in {...}' (what is expected)."""
        where = f"{self.table} 0x{self.address:04X}"
        if words is None:
            return f"{where} in {{{', '.join(_show(v) for v in self.values)}}}"
        return f"{where} = {_show(self.decode(words))}"


def _show(value: int | str) -> str:
    return repr(value) if isinstance(value, str) else f"0x{value:04X}"
