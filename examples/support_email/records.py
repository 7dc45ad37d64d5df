"""The support-email pipeline's records: the input email and what each step returns.

Step results are checkpointed, so each has a stable tag (its schema version in
the name): a resumed run decodes them back into these types.
"""

from __future__ import annotations

import msgspec
import roost

#: The name the (simulated, rule-based) model reports its token usage under.
MODEL = "support-rules-v1"


class Email(msgspec.Struct, frozen=True, gc=False, tag="support.email.v1"):
    """An incoming customer email, the input of one run."""

    email_id: str
    sender: str
    name: str
    subject: str
    body: str


class StepOutput(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Base of the actor steps' results: the tokens the step's (simulated) model used.

    `usage` reports them to roost (it records them on the step's trace and adds them up
    per run); the rule-based model only counts the tokens it reads.
    """

    tokens: int
    usage: roost.Usage | None = None

    def __post_init__(self) -> None:
        if self.usage is None:
            msgspec.structs.force_setattr(self, "usage", roost.Usage(MODEL, input_tokens=self.tokens))


class Classification(StepOutput, frozen=True, kw_only=True, gc=False,
                     tag="support.classification.v1"):
    """The email's intent and urgency; `certainty` in [0, 1] says how sure the classifier is."""

    intent: str
    urgency: str
    certainty: float


class Entities(StepOutput, frozen=True, kw_only=True, gc=False, tag="support.entities.v1"):
    """What the extractor found: account and order numbers, products, the issue sentence."""

    account: str | None
    order: str | None
    products: list[str]
    issue: str


class ArticleHit(msgspec.Struct, frozen=True, gc=False, tag="support.article_hit.v1"):
    """One knowledge-base article found for a query; `generic` when it came from the fallback."""

    article_id: str
    title: str
    summary: str
    score: float
    generic: bool = False


class Retrieval(StepOutput, frozen=True, kw_only=True, gc=False, tag="support.retrieval.v1"):
    """The articles the retriever found, best first."""

    hits: list[ArticleHit]
    fallback: bool


class Draft(StepOutput, frozen=True, kw_only=True, gc=False, tag="support.draft.v1"):
    """A reply drafted from a template, and how confident the drafter is in it."""

    text: str
    confidence: float


class ComplianceReport(StepOutput, frozen=True, kw_only=True, gc=False,
                       tag="support.compliance.v1"):
    """The draft after the compliance rules: redacted text, adjusted confidence, what was found."""

    text: str
    confidence: float
    violations: list[str]
    redactions: int


class Reply(msgspec.Struct, frozen=True, gc=False):
    """The reply the `send` step hands to the `send_email` tool, as its keyword arguments.

    A reviewer sees it at the send gate, and an "edit" decision supplies a whole `Reply`
    (a rewritten body, say) that is sent in its place. Untagged: it is the tool's arguments.
    """

    to: str
    subject: str
    body: str
    email_id: str


class ForReview(msgspec.Struct, frozen=True, gc=False):
    """What a person sees at the send gate: the customer's email, the reply about to go out,
    and why it needs a look (its confidence and the compliance findings)."""

    email: Email
    reply: Reply
    confidence: float
    violations: list[str]


class Receipt(msgspec.Struct, frozen=True, gc=False, tag="support.receipt.v1"):
    """What the mail server answered for a sent reply."""

    message_id: str
    to: str
