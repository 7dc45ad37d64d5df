"""Compliance rules a reply must pass before it goes out: redactions and confidence penalties."""

from __future__ import annotations

import re

from model import count_tokens
from records import ComplianceReport, Draft, Email

_ACCOUNT = re.compile(r"\bACC-\d{4}(\d{2})\b")
_REFUND_PROMISE = re.compile(r"[^.\n]*\bfull refund\b[^.\n]*\.")
_DEADLINE_PROMISE = re.compile(r"[^.\n]*\b(?:resolve|fix) this today\b[^.\n]*\.")
_LEGAL = re.compile(r"\b(?:lawyer|attorney|lawsuit|sue|court|chargeback)\b", re.IGNORECASE)

_POLICY_REFUND = ("Refunds follow our 30-day policy; our billing team will confirm what "
                  "applies to your purchase.")
_PRIORITY = "We have given this a high priority."


def check(email: Email, draft: Draft) -> ComplianceReport:
    """Apply the rules to `draft`, a reply to `email`.

    Rules:
        - account numbers are never echoed in full: all but the last two digits
          are masked (a redaction, no penalty);
        - no refund promised beyond the 30-day policy: the sentence is replaced
          with the policy, and the confidence drops by 0.3;
        - no promised resolution times: the sentence is softened, -0.05;
        - an email that mentions legal action is answered by a person: the
          confidence is capped at 0.5.
    """
    text, redactions = _ACCOUNT.subn(r"ACC-****\1", draft.text)
    confidence = draft.confidence
    violations: list[str] = []
    text, promises = _REFUND_PROMISE.subn(_POLICY_REFUND, text)
    if promises:
        violations.append("refund promised beyond policy")
        confidence -= 0.3
    text, deadlines = _DEADLINE_PROMISE.subn(_PRIORITY, text)
    if deadlines:
        violations.append("resolution time promised")
        confidence -= 0.05
    if _LEGAL.search(email.body):
        violations.append("legal action mentioned")
        confidence = min(confidence, 0.5)
    return ComplianceReport(text=text, confidence=round(max(confidence, 0.0), 3),
                            violations=violations, redactions=redactions,
                            tokens=200 + count_tokens(draft.text) + 12)
