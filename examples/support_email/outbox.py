"""The outbox: every reply the mail server accepted, one JSON line each, in the store folder."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import msgspec


class SentEmail(msgspec.Struct, frozen=True, gc=False):
    """One accepted reply, with the idempotency key it was sent under."""

    key: str
    email_id: str
    message_id: str
    to: str
    subject: str
    body: str


_DECODER = msgspec.json.Decoder(SentEmail)


class Outbox:
    """An append-only JSON-lines file of sent replies.

    Each reply is written with one `write` on a file opened for appending and
    then fsynced, so a crash leaves whole lines only. File access runs in a
    worker thread, off the event loop.

    Args:
        path: the file; created on the first send.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    async def append(self, sent: SentEmail) -> None:
        """Store `sent` durably; returns once it is on disk."""
        await anyio.to_thread.run_sync(self._append, msgspec.json.encode(sent) + b"\n")

    async def find(self, key: str) -> SentEmail | None:
        """The reply sent under idempotency key `key`, or None."""
        sent = await anyio.to_thread.run_sync(self.read)
        return next((s for s in sent if s.key == key), None)

    def read(self) -> list[SentEmail]:
        """Every reply in the outbox, oldest first (blocking: call it off the event loop)."""
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        return [_DECODER.decode(line) for line in lines if line]

    def _append(self, line: bytes) -> None:
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, line)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
