"""A deterministic, rule-based stand-in for the language model: classify, extract, draft.

Every function is pure: the same email always gets the same answer, the same
token count and the same simulated latency, so runs are reproducible offline.
"""

from __future__ import annotations

import math
import re
import zlib

from records import Classification, Draft, Email, Entities, Retrieval

#: Product names the extractor knows, with the lowercase aliases customers use.
PRODUCTS: dict[str, tuple[str, ...]] = {
    "Kestrel Cloud": ("kestrel cloud", "cloud backup"),
    "Kestrel Cloud Pro": ("kestrel cloud pro", "cloud pro"),
    "Nestbox Router": ("nestbox router", "nestbox", "router"),
    "Perch Camera": ("perch camera", "perch cam", "camera"),
    "Feather Tablet": ("feather tablet", "tablet"),
    "Talon Keyboard": ("talon keyboard", "keyboard"),
    "Songbird Speaker": ("songbird speaker", "speaker"),
    "Kestrel mobile app": ("kestrel mobile app", "mobile app", "the app"),
}

#: Keywords (matched on word boundaries) and how strongly each points to an intent.
INTENT_KEYWORDS: dict[str, dict[str, float]] = {
    "billing": {"invoice": 2, "charged": 2, "charge": 1.5, "bill": 1.5, "billing": 2,
                "payment": 1, "card": 1, "declined": 1, "pending": 0.5, "price": 0.5},
    "refund": {"refund": 3, "money back": 3, "returned": 1.5, "reimburse": 2},
    "bug": {"crash": 2, "crashes": 2, "error": 1.5, "bug": 2, "blank screen": 2,
            "disconnecting": 1.5, "fails": 1.5, "stuck": 1.5, "sync": 1, "firmware": 1,
            "freezes": 2, "not working": 1},
    "account_access": {"log in": 2, "login": 2, "password": 2, "locked": 2, "two-factor": 2,
                       "2fa": 2, "sign in": 2, "access": 1, "reset": 1},
    "shipping": {"arrived": 2, "arrive": 2, "tracking": 2, "package": 2, "shipping": 2,
                 "ship": 1.5, "delivered": 2, "damaged": 1.5, "customs": 2, "order": 0.5},
    "cancellation": {"cancel": 3, "cancellation": 3, "subscription": 1, "close my account": 2,
                     "delete my data": 1.5, "unsubscribe": 2},
    "feature_request": {"feature": 2, "would be great": 2, "could you add": 2,
                        "plans to support": 2, "dark mode": 1, "export": 1, "wish": 1},
}

_HIGH_URGENCY = ("urgent", "asap", "immediately", "right now", "is down", "lawyer",
                 "chargeback", "unacceptable", "third time")
_LOW_URGENCY = ("no rush", "whenever you", "just wondering", "when you get a chance")

_ACCOUNT = re.compile(r"\bACC-\d{6}\b")
_ORDER = re.compile(r"\bKS-\d{5}\b")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_PATTERNS = {intent: [(re.compile(rf"\b{re.escape(word)}\b"), weight)
                      for word, weight in words.items()]
             for intent, words in INTENT_KEYWORDS.items()}


def count_tokens(text: str) -> int:
    """Roughly what a tokenizer would count: 4 tokens per 3 words."""
    return math.ceil(len(text.split()) * 4 / 3)


def latency(seed: str, low_ms: float, high_ms: float) -> float:
    """A simulated latency in seconds, in [low_ms, high_ms], always the same for `seed`."""
    spread = zlib.crc32(seed.encode()) % 1000 / 1000
    return (low_ms + (high_ms - low_ms) * spread) / 1000


def classify(email: Email) -> Classification:
    """The email's intent (by keyword scores), urgency (by cue phrases) and certainty."""
    text = f"{email.subject}\n{email.body}".lower()
    scores = {intent: sum(weight for pattern, weight in patterns if pattern.search(text))
              for intent, patterns in _PATTERNS.items()}
    intent, top = max(scores.items(), key=lambda item: item[1])
    total = sum(scores.values())
    if top == 0:
        intent, certainty = "other", 0.35
    else:
        # The winner's share of all the evidence, discounted while the evidence is thin.
        certainty = top / total * min(1.0, 0.6 + 0.1 * top)
    if any(cue in text for cue in _HIGH_URGENCY):
        urgency = "high"
    elif any(cue in text for cue in _LOW_URGENCY) or intent == "feature_request":
        urgency = "low"
    else:
        urgency = "normal"
    return Classification(intent=intent, urgency=urgency, certainty=round(certainty, 3),
                          tokens=120 + count_tokens(text) + 6)


def extract(email: Email) -> Entities:
    """Account and order numbers (regex), products (catalog aliases) and the issue sentence."""
    text = f"{email.subject}\n{email.body}"
    lowered = text.lower()
    products = [name for name, aliases in PRODUCTS.items()
                if any(re.search(rf"\b{re.escape(alias)}\b", lowered) for alias in aliases)]
    # "Kestrel Cloud Pro" also matches "Kestrel Cloud": keep the most specific name.
    products = [p for p in products if not any(o != p and o.startswith(p) for o in products)]
    account = _ACCOUNT.search(text)
    order = _ORDER.search(text)
    return Entities(account=account.group() if account else None,
                    order=order.group() if order else None,
                    products=products, issue=_issue_sentence(email),
                    tokens=150 + count_tokens(text) + 24)


def _issue_sentence(email: Email) -> str:
    """The body sentence with the most intent evidence (the subject when none has any)."""
    sentences = [s.strip() for s in _SENTENCE.split(email.body) if len(s.split()) > 3]
    scored = [(sum(weight for patterns in _PATTERNS.values() for pattern, weight in patterns
                   if pattern.search(s.lower())), -i, s) for i, s in enumerate(sentences)]
    best = max(scored, default=(0.0, 0, email.subject))
    return best[2] if best[0] > 0 else email.subject


_OPENINGS: dict[str, str] = {
    "billing": "I've looked into the charges on account {account}.",
    "refund": "I've passed your refund request for {product} to our billing team.",
    "bug": "I'm sorry {product} is giving you trouble; our engineers have the details.",
    "account_access": "Let's get you back into account {account} safely.",
    "shipping": "I've checked the delivery status of your {product} order.",
    "cancellation": "I can help you cancel {product}.",
    "feature_request": "Thank you for the idea for {product}; I've shared it with the team.",
    "other": "Thanks for getting in touch.",
}
_FULL_REFUND = "We will issue a full refund to your original payment method."
_POLICY_REFUND = ("Refunds are available within 30 days of purchase; you'll hear from us "
                  "within 2 business days.")
_RUSH = "We will resolve this today."


def draft(email: Email, classification: Classification, entities: Entities,
          retrieval: Retrieval) -> Draft:
    """A templated reply and the confidence in it.

    The confidence weighs the classifier's certainty most, then how well the
    best article matched, then whether the email named a product, account or order.
    Like a real model, the template sometimes says too much (a full account
    number, a refund promise, a deadline): the compliance step catches that.
    """
    product = entities.products[0] if entities.products else "your Kestrel product"
    lines = [f"Hi {email.name.split()[0]},", "",
             _OPENINGS[classification.intent].format(
                 account=entities.account or "your account", product=product)]
    if classification.intent == "refund":
        lines.append(_FULL_REFUND if "full refund" in email.body.lower() else _POLICY_REFUND)
    if classification.urgency == "high":
        lines.append(_RUSH)
    best = retrieval.hits[0] if retrieval.hits else None
    if best is not None:
        lines += ["", f"This article should help: {best.title} ({best.article_id}). {best.summary}"]
    lines += ["", "Best regards,", "Kestrel Support"]
    text = "\n".join(lines)
    evidence = 1.0 if (entities.products or entities.account or entities.order) else 0.5
    retrieved = best.score if best is not None else 0.0
    confidence = 0.5 * classification.certainty + 0.3 * retrieved + 0.2 * evidence
    context = count_tokens(email.body) + sum(count_tokens(h.summary) for h in retrieval.hits)
    return Draft(text=text, confidence=round(confidence, 3),
                 tokens=400 + context + count_tokens(text))
