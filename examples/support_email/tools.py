"""The example's tools: a flaky knowledge-base search and a mail sender writing to the outbox.

Both go through roost's tool proxy, which retries `kb_search`, trips its
breaker during a failure burst (answering with generic articles meanwhile),
and sends each reply at most once per idempotency key.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import roost

import model
from knowledge_base import KnowledgeBase
from outbox import Outbox, SentEmail
from records import ArticleHit, Receipt

#: Which calls to the search service fail: 8 in every 100 alone, and once every 200
#: calls a burst of 5 in a row, enough to trip the breaker (about 10% in all).
_SPORADIC = frozenset({7, 19, 33, 48, 64, 71, 86, 93})
_BURST = range(152, 157)
_BURST_PERIOD = 200
_ADDRESS = re.compile(r"[^@\s]+@[a-z0-9-]+(\.[a-z0-9-]+)*\.[a-z]{2,}")


def _service_fails(call: int) -> bool:
    return call % 100 in _SPORADIC or call % _BURST_PERIOD in _BURST


def kb_search_tool(kb: KnowledgeBase) -> Callable[..., Awaitable[list[ArticleHit]]]:
    """The `kb_search` tool over `kb`, as a remote search service that sometimes fails."""
    calls = itertools.count()

    async def generic_articles(query: str, limit: int = 3) -> list[ArticleHit]:
        return kb.generic(limit)

    @roost.tool(name="kb_search", read_only=True, idempotent=True,
                breaker=roost.Breaker(failures=5, cooldown=0.5),
                retry=roost.Retry(attempts=3, base_delay=0.01, max_delay=0.05),
                timeout=1.0, fallback=generic_articles)
    async def kb_search(query: str, limit: int = 3) -> list[ArticleHit]:
        call = next(calls)
        await asyncio.sleep(model.latency(query, 5, 20))
        if _service_fails(call):
            raise roost.TransientToolError(f"knowledge-base search answered 503 (call {call})")
        return kb.search(query, limit)

    return kb_search


def send_email_tool(outbox: Outbox) -> Callable[..., Awaitable[Receipt]]:
    """The `send_email` tool: a mail server that accepts a reply by appending it to `outbox`."""

    async def already_sent(key: str, args: Mapping[str, Any]) -> roost.Done | roost.NotDone:
        """Settles a send cut short by a crash: did the reply reach the outbox?"""
        sent = await outbox.find(key)
        return roost.NotDone() if sent is None else roost.Done(Receipt(sent.message_id, sent.to))

    @roost.tool(name="send_email", idempotent=False, key_param="idempotency_key",
                verify=already_sent, timeout=2.0)
    async def send_email(to: str, subject: str, body: str, email_id: str,
                         idempotency_key: str) -> Receipt:
        await asyncio.sleep(model.latency(idempotency_key, 5, 15))
        if not _ADDRESS.fullmatch(to):
            raise roost.PermanentToolError(f"550 mailbox unavailable: {to!r} cannot receive mail")
        message_id = f"<{idempotency_key[:24]}@mail.kestrel.example>"
        await outbox.append(SentEmail(idempotency_key, email_id, message_id, to, subject, body))
        return Receipt(message_id, to)

    return send_email
