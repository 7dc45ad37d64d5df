"""The support-email pipeline: its step actors and the graph that connects them.

    classify ──────────────┐
    extract ──> retrieve ──┴─> draft ──> compliance ──> route ──> send

`classify` runs alongside `extract` and `retrieve`. `route` ends the run in
status `needs_review` (holding its draft) when confidence is below 0.8;
otherwise `send` hands the reply to the `send_email` tool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import roost

import compliance
import model
from records import (
    Classification,
    ComplianceReport,
    Draft,
    Email,
    Entities,
    Receipt,
    Retrieval,
    Routed,
)

#: Replies less certain than this go to a person.
CONFIDENCE_THRESHOLD = 0.8


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


class Router(roost.Actor):
    """Sends a confident reply on its way, and hands the others to a person."""

    async def receive(self, message: Any) -> Any:
        match message:
            case roost.RunStep(results={"compliance": ComplianceReport() as report}):
                if report.confidence >= CONFIDENCE_THRESHOLD:
                    return Routed(confidence=report.confidence, tokens=0)
                reasons = [f"confidence {report.confidence:.2f} < {CONFIDENCE_THRESHOLD:.2f}",
                           *report.violations]
                return roost.NeedsReview("; ".join(reasons))


def _reply(results: Mapping[str, Any], email: Email) -> dict[str, Any]:
    return {"to": email.sender, "subject": f"Re: {email.subject}",
            "body": results["compliance"].text, "email_id": email.email_id}


SUPPORT_EMAIL = roost.Pipeline("support-email", [
    roost.Step("classify", Classifier, output=Classification),
    roost.Step("extract", Extractor, output=Entities),
    roost.Step("retrieve", Retriever, after="extract", output=Retrieval,
         retry=roost.Retry(attempts=3, base_delay=0.05, max_delay=0.2)),
    roost.Step("draft", Drafter, after=["classify", "retrieve"], output=Draft),
    roost.Step("compliance", ComplianceChecker, after="draft", output=ComplianceReport),
    roost.Step("route", Router, after="compliance", output=Routed | roost.NeedsReview),
    roost.Step("send", tool="send_email", after="route", args=_reply, output=Receipt),
], input_type=Email)
