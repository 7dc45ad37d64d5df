"""The support-email pipeline: its step actors and the graph that connects them.

    classify ──────────────┐
    extract ──> retrieve ──┴─> draft ──> compliance ──> [gate] send

`classify` runs alongside `extract` and `retrieve`. A reply whose confidence is
below 0.8 waits at the gate before `send` for a person (the `support` group) to
approve it, edit it or reject it; the run is parked `waiting` meanwhile, holding no
actor or task, and goes on (in this process or a later one) once someone decides.
Without a decision within 4 hours the gate passes to the `leads` for 2 more, then
the reply is rejected: a low-confidence draft is never sent unreviewed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import msgspec
import roost

import compliance
import model
from records import (
    Classification,
    ComplianceReport,
    Draft,
    Email,
    Entities,
    ForReview,
    Receipt,
    Reply,
    Retrieval,
)

#: Replies less certain than this go to a person.
CONFIDENCE_THRESHOLD = 0.8
HOUR = 3600.0


class Classifier(roost.Actor):
    """Finds an email's intent and urgency."""

    async def receive(self, message: Any) -> Any:
        match message:
            case roost.RunStep(input=Email() as email):
                await asyncio.sleep(model.latency(f"{email.email_id}:classify", 10, 30))
                return model.classify(email)


class Extractor(roost.Actor):
    """Pulls account and order numbers, products and the issue out of an email."""

    async def receive(self, message: Any) -> Any:
        match message:
            case roost.RunStep(input=Email() as email):
                await asyncio.sleep(model.latency(f"{email.email_id}:extract", 5, 15))
                return model.extract(email)


class Retriever(roost.Actor):
    """Finds knowledge-base articles for the issue, through the `kb_search` tool."""

    async def receive(self, message: Any) -> Any:
        match message:
            case roost.RunStep(results={"extract": Entities() as entities}):
                query = " ".join([entities.issue, *entities.products])
                hits = await self.ctx.tools.call("kb_search", query=query, limit=3)
                return Retrieval(hits=hits, fallback=bool(hits) and all(h.generic for h in hits),
                                 tokens=model.count_tokens(query))


class Drafter(roost.Actor):
    """Writes a reply from the classification, the entities and the articles."""

    async def receive(self, message: Any) -> Any:
        match message:
            case roost.RunStep(input=Email() as email, results=results):
                await asyncio.sleep(model.latency(f"{email.email_id}:draft", 40, 120))
                return model.draft(email, results["classify"], results["extract"],
                                   results["retrieve"])


class ComplianceChecker(roost.Actor):
    """Redacts and scores a draft against the compliance rules."""

    async def receive(self, message: Any) -> Any:
        match message:
            case roost.RunStep(input=Email() as email, results={"draft": Draft() as draft}):
                await asyncio.sleep(model.latency(f"{email.email_id}:compliance", 5, 15))
                return compliance.check(email, draft)


def _reply(results: Mapping[str, Any], email: Email) -> dict[str, Any]:
    """The `send_email` tool's arguments: the compliance-checked reply to `email`."""
    return msgspec.structs.asdict(_reply_to(results, email))


def _reply_to(results: Mapping[str, Any], email: Email) -> Reply:
    return Reply(to=email.sender, subject=f"Re: {email.subject}",
                 body=results["compliance"].text, email_id=email.email_id)


def _unsure(results: Mapping[str, Any]) -> bool:
    return results["compliance"].confidence < CONFIDENCE_THRESHOLD


def _why_unsure(results: Mapping[str, Any]) -> str:
    report: ComplianceReport = results["compliance"]
    return "; ".join([f"confidence {report.confidence:.2f} < {CONFIDENCE_THRESHOLD:.2f}",
                      *report.violations])


def _for_review(results: Mapping[str, Any], email: Email) -> ForReview:
    report: ComplianceReport = results["compliance"]
    return ForReview(email=email, reply=_reply_to(results, email),
                     confidence=report.confidence, violations=report.violations)


def support_email(*, review_timeout: float = 4 * HOUR,
                  leads_timeout: float = 2 * HOUR) -> roost.Pipeline:
    """The pipeline. `review_timeout` is how long (seconds) the support team has to decide
    a gated reply, `leads_timeout` how long the leads have after it passes to them."""
    review = roost.Gate(
        when=_unsure, reason=_why_unsure, assignees=["support"], input_type=Reply,
        show=_for_review, timeout=review_timeout,
        on_timeout=roost.Escalate(to=["leads"], timeout=leads_timeout, on_timeout="reject"))
    return roost.Pipeline("support-email", [
        roost.Step("classify", Classifier, output=Classification),
        roost.Step("extract", Extractor, output=Entities),
        roost.Step("retrieve", Retriever, after="extract", output=Retrieval,
                   retry=roost.Retry(attempts=3, base_delay=0.05, max_delay=0.2)),
        roost.Step("draft", Drafter, after=["classify", "retrieve"], output=Draft),
        roost.Step("compliance", ComplianceChecker, after="draft", output=ComplianceReport),
        roost.Step("send", tool="send_email", after="compliance", args=_reply, gate=review,
                   output=Receipt),
    ], input_type=Email)


SUPPORT_EMAIL = support_email()
