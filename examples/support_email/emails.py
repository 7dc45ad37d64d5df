"""The bundled sample emails: generated from templates by a seeded generator, so always the same."""

from __future__ import annotations

import random

from records import Email

#: How many sample emails there are.
COUNT = 240
_SEED = 20240611

_ISSUES: dict[str, list[str]] = {
    "billing": [
        "I was charged twice for {product} this month.",
        "My invoice shows a charge I don't recognize for {product}.",
        "The bill for {product} is higher than my plan price.",
        "My card was declined but I still see a pending charge for {product}.",
    ],
    "refund": [
        "I'd like a refund for {product}, it doesn't work as advertised.",
        "I want my money back for the {product} I bought last week.",
        "Please refund my {product} purchase, I returned it already.",
        "Can I get a full refund for {product}? It broke after two days.",
    ],
    "bug": [
        "{product} crashes every time I open it.",
        "{product} keeps disconnecting from wifi.",
        "Sync is stuck and files are missing in {product}.",
        "The firmware update for {product} fails with an error.",
        "{product} shows a blank screen after the latest update.",
    ],
    "account_access": [
        "I can't log in to my account, the password reset email never arrives.",
        "My two-factor code is rejected every time I sign in.",
        "My account is locked after too many failed logins.",
        "I need to change the email address on my account but I can't access it.",
    ],
    "shipping": [
        "My order for {product} hasn't arrived yet and tracking hasn't updated in a week.",
        "The {product} arrived damaged, the box was crushed.",
        "Where is my package? Tracking says delivered but I have nothing.",
        "Do you ship {product} to Canada, and what about customs fees?",
    ],
    "cancellation": [
        "Please cancel my {product} subscription at the end of this month.",
        "How do I close my account and delete my data?",
        "I want to cancel {product}, it's not worth the price for us.",
    ],
    "feature_request": [
        "It would be great if {product} supported dark mode.",
        "Could you add an export to CSV option in {product}?",
        "Any plans to support multiple users on {product}?",
        "I wish {product} could schedule recordings.",
    ],
    "other": [
        "Do you have any job openings on your support team?",
        "I just wanted to say thanks, your service has been great.",
        "Is there a discount for schools and libraries?",
    ],
    "vague": [
        "Something is wrong with my {product}, please help.",
        "I have a problem with {product}, can someone call me?",
        "Hi, {product} is acting weird since yesterday.",
    ],
}
_SUBJECTS: dict[str, list[str]] = {
    "billing": ["Question about my invoice", "Charged twice", "Unexpected charge", "Billing issue"],
    "refund": ["Refund request", "Refund please", "Money back?", "Returning {product}"],
    "bug": ["{product} problem", "Bug report", "{product} not working", "Error in {product}"],
    "account_access": ["Can't log in", "Locked out", "Login problem", "Account access"],
    "shipping": ["Where is my order?", "Delivery problem", "Shipping question", "Damaged package"],
    "cancellation": ["Cancel my subscription", "Cancellation", "Please cancel"],
    "feature_request": ["Feature request", "Suggestion for {product}", "Idea"],
    "other": ["Hello", "Quick question", "Thanks!"],
    "vague": ["Help", "Problem", "{product}"],
}
_PRODUCTS = {
    "billing": ["Kestrel Cloud", "Kestrel Cloud Pro", "my subscription"],
    "refund": ["Perch Camera", "Talon Keyboard", "Songbird Speaker", "Feather Tablet"],
    "bug": ["the Kestrel mobile app", "Perch Camera", "Kestrel Cloud", "Nestbox Router",
            "Feather Tablet"],
    "shipping": ["Nestbox Router", "Perch Camera", "Feather Tablet", "Songbird Speaker"],
    "cancellation": ["Kestrel Cloud", "Kestrel Cloud Pro"],
    "feature_request": ["the Kestrel mobile app", "Perch Camera", "Kestrel Cloud"],
    "vague": ["Nestbox Router", "Perch Camera", "Talon Keyboard", "Feather Tablet", "my device"],
}
#: How often each kind of email occurs; "vague" ones route to a person.
_WEIGHTS = {"billing": 14, "refund": 12, "bug": 18, "account_access": 12, "shipping": 12,
            "cancellation": 10, "feature_request": 8, "other": 6, "vague": 8}
_FIRST = ["Ada", "Grace", "Alan", "Barbara", "Edsger", "Frances", "Katherine", "Linus", "Margaret",
          "Dennis", "Radia", "Ken", "Hedy", "Tim", "Shafi", "Donald", "Annie", "Guido"]
_LAST = ["Lovelace", "Hopper", "Turing", "Liskov", "Dijkstra", "Allen", "Johnson", "Torvalds",
         "Hamilton", "Ritchie", "Perlman", "Thompson", "Lamarr", "Lee", "Goldwasser", "Knuth"]
_GREETINGS = ["Hi,", "Hello support,", "Dear Kestrel team,", "Hey there,", "Good morning,"]
_URGENT = ["This is urgent, our whole office depends on it.", "Please fix this ASAP.",
           "I need this resolved immediately.", "This is the third time I'm writing about this."]
_RELAXED = ["No rush on this.", "Whenever you get a chance is fine."]
_LEGAL = "If this isn't sorted out this week I'll file a chargeback and talk to my lawyer."
_BAD_ADDRESSES = ["postmaster@localhost", "jane.doe@@example.com", "support-reply@invalid"]


def generate(count: int = COUNT, seed: int = _SEED) -> list[Email]:
    """The first `count` sample emails, `email-0000` on; the same on every call."""
    rng = random.Random(seed)
    kinds = list(_WEIGHTS)
    return [_email(rng, i, rng.choices(kinds, weights=list(_WEIGHTS.values()))[0])
            for i in range(count)]


def _email(rng: random.Random, index: int, kind: str) -> Email:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    product = rng.choice(_PRODUCTS.get(kind, ["Kestrel Cloud"]))
    issue = rng.choice(_ISSUES[kind]).format(product=product)
    sentences = [issue[0].upper() + issue[1:]]
    if rng.random() < 0.12 and kind not in ("other", "vague"):  # a second, unrelated concern
        other = rng.choice([k for k in _ISSUES if k not in (kind, "other", "vague")])
        second = rng.choice(_ISSUES[other]).format(product=rng.choice(_PRODUCTS.get(other, [product])))
        sentences.append("Another thing: " + second)
    if kind in ("billing", "account_access", "cancellation", "refund") and rng.random() < 0.6:
        sentences.append(f"My account number is ACC-{rng.randrange(10**6):06d}.")
    if kind in ("shipping", "refund") and rng.random() < 0.5:
        sentences.append(f"The order number is KS-{rng.randrange(10**5):05d}.")
    roll = rng.random()
    if roll < 0.1:
        sentences.append(rng.choice(_URGENT))
    elif roll < 0.18:
        sentences.append(rng.choice(_RELAXED))
    if kind in ("billing", "refund", "shipping") and rng.random() < 0.06:
        sentences.append(_LEGAL)
    body = "\n\n".join([rng.choice(_GREETINGS), " ".join(sentences), f"Thanks,\n{first}"])
    sender = f"{first.lower()}.{last.lower()}@example.com"
    if rng.random() < 0.015:
        sender = rng.choice(_BAD_ADDRESSES)
    subject = rng.choice(_SUBJECTS[kind]).format(product=product)
    return Email(email_id=f"email-{index:04d}", sender=sender, name=f"{first} {last}",
                 subject=subject, body=body)
