"""Stored records: the tagged, versioned msgspec base type and its msgpack codec.

Every stored record is a frozen `msgspec.Struct` subclass of `Record` with a stable
tag (`kind`, stored in the bytes) and a schema version (`schema`), so class names
can change and stored bytes can be told apart and refused when they do not fit.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any, Generic, TypeVar

import msgspec

from roost.errors import RecordCorrupt, StoreError


class Record(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", gc=False):
    """Base of every stored record.

    A subclass sets a `tag=` that never changes once records are stored, and
    redeclares `schema: int = N` with the next N whenever its layout changes. The
    codec refuses records of any other schema version.
    """

    schema: int = 1


R = TypeVar("R", bound=Record)

#: Builds the error for a record that does not decode, from its key, the reason, and its
#: fields when the bytes are at least a msgpack map (None otherwise).
CorruptError = Callable[[bytes, str, dict[str, Any] | None], StoreError]

_ENCODER = msgspec.msgpack.Encoder()
_LOOSE = msgspec.msgpack.Decoder(dict[str, Any])


class RecordCodec(Generic[R]):
    """Encodes and decodes one record type; build it once per type, at import time."""

    def __init__(self, record_type: type[R], corrupt: CorruptError | None = None) -> None:
        """Args:
            record_type: the `Record` subclass.
            corrupt: builds the error raised for a record that does not decode; by
                default `RecordCorrupt` naming the record kind and key.
        """
        self.kind: str = str(record_type.__struct_config__.tag)
        self.schema: int = next(field.default for field in msgspec.structs.fields(record_type)
                                if field.name == "schema")
        self._decoder = msgspec.msgpack.Decoder(record_type)
        self._corrupt: CorruptError = corrupt or self._record_corrupt

    def encode(self, record: R) -> bytes:
        """The msgpack bytes of `record`."""
        return _ENCODER.encode(record)

    def decode(self, key: bytes, data: bytes) -> R:
        """The record in `data`, read from `key`.

        Raises:
            StoreError: the corrupt-record error (`RecordCorrupt` by default) when
                `data` is not this kind of record in this schema version: corrupt
                bytes, another tag, an unknown schema version or a field that does not fit.
        """
        try:
            record = self._decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise self._explained(key, data, exc) from exc
        if record.schema != self.schema:
            raise self._corrupt(key, self._unknown_schema(record.schema),
                                msgspec.structs.asdict(record))
        return record

    async def decode_all(self, entries: AsyncIterable[tuple[bytes, bytes]],
                         damaged: list[RecordCorrupt] | None) -> AsyncIterator[R]:
        """The records of `entries` (a scan). One that does not decode raises
        `RecordCorrupt`; with `damaged`, it is skipped and its error appended instead, so
        a caller can go on with the records it can read and name the others."""
        async for key, value in entries:
            try:
                yield self.decode(key, value)
            except RecordCorrupt as error:
                if damaged is None:
                    raise
                damaged.append(error)

    def _explained(self, key: bytes, data: bytes, error: msgspec.DecodeError) -> StoreError:
        """The error for `data` that does not decode, in terms of tag and schema if readable."""
        try:
            fields = _LOOSE.decode(data)
        except msgspec.DecodeError:
            return self._corrupt(key, f"the bytes are not a msgpack record ({error})", None)
        kind, schema = fields.get("kind"), fields.get("schema")
        if kind != self.kind:
            reason = f"it is tagged {kind!r}, not {self.kind!r} ({error})"
        elif schema != self.schema:
            reason = self._unknown_schema(schema)
        else:
            reason = f"it does not fit the {self.kind!r} schema version {self.schema} ({error})"
        return self._corrupt(key, reason, fields)

    def _unknown_schema(self, schema: object) -> str:
        return (f"unknown schema version {schema!r} of a {self.kind!r} record (this roost reads "
                f"version {self.schema}); it was written by another roost version")

    def _record_corrupt(self, key: bytes, error: str, fields: dict[str, Any] | None) -> StoreError:
        return RecordCorrupt(self.kind, key, error)
