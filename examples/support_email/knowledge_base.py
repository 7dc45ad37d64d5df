"""The local knowledge base: articles shipped as JSON, searched by keyword scoring."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from records import ArticleHit

_SOURCE = Path(__file__).with_name("knowledge_base.json")
_WORD = re.compile(r"[a-z0-9-]+")
#: Articles the fallback offers when search is down: contact details and set-up guides.
_GENERIC = ("kb-025", "kb-026", "kb-012")
_STOP = frozenset({"a", "an", "and", "the", "your", "our", "with", "on", "or", "to", "of", "how",
                   "after", "we", "is", "it", "kestrel"})


class Article(msgspec.Struct, frozen=True, gc=False):
    """One help-center article."""

    id: str
    title: str
    keywords: list[str]
    summary: str


class KnowledgeBase:
    """Articles by id, with keyword search.

    Args:
        articles: the articles; defaults to the ones shipped with the example.
    """

    def __init__(self, articles: list[Article] | None = None) -> None:
        if articles is None:
            articles = msgspec.json.decode(_SOURCE.read_bytes(), type=list[Article])
        self.articles = {article.id: article for article in articles}
        self._patterns = {
            article.id: [re.compile(rf"\b{re.escape(k)}\b") for k in article.keywords]
            for article in articles}

    def search(self, query: str, limit: int = 3) -> list[ArticleHit]:
        """The `limit` best articles for `query`, scored in [0, 1), best first.

        An article scores 1 per keyword phrase found in the query and 0.25 per
        title word; the raw score `s` maps to `s / (s + 1)`.
        """
        lowered = query.lower()
        words = set(_WORD.findall(lowered))
        hits = []
        for article in self.articles.values():
            raw = sum(1.0 for p in self._patterns[article.id] if p.search(lowered))
            raw += 0.25 * len(words & set(_WORD.findall(article.title.lower())) - _STOP)
            if raw > 0:
                hits.append(ArticleHit(article.id, article.title, article.summary,
                                       round(raw / (raw + 1.0), 3)))
        hits.sort(key=lambda hit: (-hit.score, hit.article_id))
        return hits[:limit]

    def generic(self, limit: int = 3) -> list[ArticleHit]:
        """General articles, offered when search is unavailable, with a low score."""
        return [ArticleHit(a.id, a.title, a.summary, 0.2, generic=True)
                for a in (self.articles[i] for i in _GENERIC[:limit])]

