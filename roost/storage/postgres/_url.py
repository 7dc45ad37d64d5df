"""PostgreSQL store URLs: telling them from store folders, and showing them without secrets."""

from __future__ import annotations

from typing import TypeGuard
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from roost.errors import ConfigurationError

SCHEMES = ("postgresql", "postgres")


def is_postgres_url(target: object) -> TypeGuard[str]:
    """Whether `target` names a PostgreSQL store (`postgresql://...` or `postgres://...`)."""
    return isinstance(target, str) and target.split("://", 1)[0].lower() in SCHEMES \
        and "://" in target


def redact(url: str) -> str:
    """`url` with its password (in the user part or a `password=` parameter) left out."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("://", 1)[0] + "://(a URL that does not parse)"
    netloc = parts.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        netloc = f"{user.split(':', 1)[0]}@{host}"
    query = urlencode([(name, value) for name, value in parse_qsl(parts.query)
                       if name.lower() != "password"], safe="/")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def check_url(url: str) -> str:
    """`url` if it is a PostgreSQL URL roost can use, else a ConfigurationError saying why."""
    if not is_postgres_url(url):
        raise ConfigurationError(f"store URL {redact(url)!r} is not a PostgreSQL URL; use "
                                 "postgresql://USER:PASSWORD@HOST:PORT/DATABASE")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (parsing it is the check)
    except ValueError as error:
        raise ConfigurationError(f"store URL {redact(url)!r} does not parse ({error}); use "
                                 "postgresql://USER:PASSWORD@HOST:PORT/DATABASE") from None
    return url
