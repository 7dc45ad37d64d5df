"""`ChildSpec` and `Backoff`: how a supervisor starts, restarts and stops one child.

All durations are seconds. Specs are frozen and validated when built: a bad
value raises `ConfigurationError` naming the field and the value.
"""

from __future__ import annotations

import difflib
import inspect
import math
import weakref
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from roost._validate import check_count, check_seconds, is_number
from roost.errors import ConfigurationError
from roost.mailbox.mailbox import DEFAULT_CAPACITY, OVERFLOW_POLICIES, Overflow

if TYPE_CHECKING:
    from roost.actors.actor import Actor

Restart = Literal["permanent", "transient", "temporary"]
RESTART_TYPES: tuple[Restart, ...] = ("permanent", "transient", "temporary")
#: Seconds an actor gets to stop (and, when this is 0, to start) unless its spec says otherwise.
DEFAULT_SHUTDOWN_TIMEOUT = 5.0


def check_name(owner: str, name: Any) -> None:
    """Raise unless `name` is a non-empty string without `/`."""
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigurationError(
            f"{owner}: name must be a non-empty string without '/', got {name!r}"
        )


def check_shutdown_timeout(owner: str, value: Any) -> None:
    """Raise unless `value` is seconds >= 0: 0 stops at once, `math.inf` waits for ever."""
    if not (isinstance(value, int | float) and not isinstance(value, bool)
            and (is_number(value) or value == math.inf) and value >= 0):
        raise ConfigurationError(
            f"{owner}: shutdown_timeout must be a number of seconds >= 0 (0: stop at once, "
            f"math.inf: wait for ever), got {value!r}"
        )


def check_options(owner: str, options: Iterable[str], valid: Sequence[str],
                  listing: str | None = None) -> None:
    """Raise `ConfigurationError` naming every option not in `valid`, and listing `valid`.

    Args:
        owner: who took the options, e.g. `Supervisor 'app'`.
        options: the option names given.
        valid: the names allowed.
        listing: how to list them in the message (default: comma-separated).
    """
    unknown = [name for name in options if name not in valid]
    if not unknown:
        return
    described = []
    for name in unknown:
        close = difflib.get_close_matches(name, valid, n=1)
        described.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
    raise ConfigurationError(
        f"{owner}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(described)}; "
        f"valid options are {listing or ', '.join(valid) or 'none'}"
    )


# The keyword parameters of each actor class's __init__ (None: it takes **kwargs).
_init_keywords: weakref.WeakKeyDictionary[type[Actor], tuple[str, ...] | None] = (
    weakref.WeakKeyDictionary()
)


def check_init_keywords(owner: str, factory: type[Actor], keywords: Iterable[str],
                        options: Sequence[str] = (), options_are: str = "") -> None:
    """Refuse a keyword that is neither one of `options` nor a parameter of `factory.__init__`.

    The message names it (with a close match, if any) and lists what is valid, so a typo
    fails where it is written instead of at the actor's start. Nothing is refused when
    `__init__` takes `**kwargs` or has no signature to read.

    Args:
        owner: who took the keywords, e.g. `spawn Greeter`.
        factory: the actor class.
        keywords: the keyword names given.
        options: names taken besides `__init__`'s (spawn's options), described in the
            message as `options_are`.
    """
    try:
        accepted = _init_keywords[factory]
    except KeyError:
        accepted = _keywords_of(factory)
        _init_keywords[factory] = accepted
    if accepted is None:
        return
    takes = (f"{', '.join(accepted)} ({factory.__name__}.__init__'s parameters)"
             if accepted else f"none from {factory.__name__}.__init__, which takes no keywords")
    listing = f"{', '.join(options)} ({options_are}) and {takes}" if options else takes
    check_options(owner, keywords, (*options, *accepted), listing=listing)


def _keywords_of(factory: type[Actor]) -> tuple[str, ...] | None:
    if factory.__init__ is object.__init__:
        return ()
    try:
        parameters = inspect.signature(factory).parameters.values()  # without `self`
    except (TypeError, ValueError):  # no signature to read: let __init__ decide
        return None
    keywords = []
    for parameter in parameters:
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                              inspect.Parameter.KEYWORD_ONLY):
            keywords.append(parameter.name)
    return tuple(keywords)


class Backoff(msgspec.Struct, frozen=True, kw_only=True):
    """Delay between consecutive restarts of one child: exponential, jittered, bounded.

    The first restart is immediate; the n-th consecutive one waits
    `min(maximum, initial * multiplier ** (n - 2))`, reduced by up to `jitter`
    (a fraction) at random, so it never exceeds `maximum`. The count resets once
    the child has run cleanly for `reset_after` seconds since its last (re)start:
    the time spent waiting out a delay does not count, so a crash loop is never
    mistaken for a recovery and the delays do reach `maximum`.
    """

    initial: float = 0.01
    maximum: float = 1.0
    multiplier: float = 2.0
    jitter: float = 0.2
    reset_after: float = 5.0

    def __post_init__(self) -> None:
        check_seconds("Backoff", "initial", self.initial)
        check_seconds("Backoff", "maximum", self.maximum)
        check_seconds("Backoff", "reset_after", self.reset_after)
        if self.maximum < self.initial:
            raise ConfigurationError(
                f"Backoff: maximum ({self.maximum!r}) must be >= initial ({self.initial!r})"
            )
        if not (is_number(self.multiplier) and self.multiplier >= 1):
            raise ConfigurationError(f"Backoff: multiplier must be >= 1, got {self.multiplier!r}")
        if not (is_number(self.jitter) and 0 <= self.jitter <= 1):
            raise ConfigurationError(f"Backoff: jitter must be between 0 and 1, got {self.jitter!r}")

    def delay(self, consecutive: int, rand: float) -> float:
        """Seconds to wait before the `consecutive`-th restart in a row (1 = the first).

        Args:
            consecutive: how many restarts in a row this one is, counting itself.
            rand: a number in [0, 1) (injected so tests are deterministic).
        """
        if consecutive <= 1:
            return 0.0
        try:
            grown = self.initial * self.multiplier ** (consecutive - 2)
        except OverflowError:  # a huge multiplier: past any maximum (unless it multiplies 0)
            grown = math.inf if self.initial > 0 else 0.0
        return min(self.maximum, grown) * (1.0 - self.jitter * rand)


class ChildSpec(msgspec.Struct, frozen=True, kw_only=True):
    """How to start one child and what to do when it exits.

    Attributes:
        factory: an `Actor` subclass, or a nested `SupervisorSpec`.
        name: the child's name (its path's last part); defaults to the class name.
        args: positional arguments for the actor's `__init__`.
        kwargs: keyword arguments for the actor's `__init__`, checked against its
            parameters when the spec is built (unless it takes `**kwargs`).
        restart: `permanent` (always restarted), `transient` (restarted only after a
            failure, not after a normal exit) or `temporary` (never restarted). The
            default is OTP's `permanent`; `spawn` and `start` default to `transient`.
        shutdown_timeout: seconds a stopping actor gets to finish the message it is
            handling and then its `on_stop`, each, before it is cancelled; it also
            bounds `on_start` where the start is awaited (`start`, `StartChild`, a
            restart; not `spawn`, which returns before `on_start` ends). `0` stops at
            once: the message is cancelled and `on_stop` does not run (OTP's
            `brutal_kill`; `on_start` then gets the default 5 s). `math.inf` waits
            for ever (OTP's `infinity`). Not given: the actor class's
            `shutdown_timeout` (5 s unless the class sets it).
        capacity: mailbox capacity.
        overflow: mailbox overflow policy (`wait`, `drop_newest`, `drop_oldest`, `fail`).
        poison_after: after this many crashes on the same message, the message is
            dead-lettered as poison instead of being redelivered (1 = drop at once).
    """

    factory: Any
    name: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)
    restart: Restart = "permanent"
    shutdown_timeout: float = None  # type: ignore[assignment]  # see __post_init__
    capacity: int = DEFAULT_CAPACITY
    overflow: Overflow = "wait"
    poison_after: int = 3

    def __post_init__(self) -> None:
        from roost.actors.actor import Actor
        from roost.actors.supervisor import SupervisorSpec

        factory = self.factory
        owner = f"ChildSpec(name={self.name!r})"
        if not isinstance(factory, SupervisorSpec) and not (
            isinstance(factory, type) and issubclass(factory, Actor)
        ):
            raise ConfigurationError(
                f"{owner}: factory must be an Actor subclass or a SupervisorSpec, got {factory!r}"
            )
        if self.name is not None:
            check_name(owner, self.name)
        if not isinstance(self.args, tuple):
            raise ConfigurationError(f"{owner}: args must be a tuple, got {self.args!r}")
        if not (isinstance(self.kwargs, dict) and all(isinstance(k, str) for k in self.kwargs)):
            raise ConfigurationError(
                f"{owner}: kwargs must be a dict of the actor's __init__ keyword arguments by "
                f"name, got {self.kwargs!r}")
        if self.kwargs and not isinstance(factory, SupervisorSpec):
            check_init_keywords(f"{owner} kwargs", factory, self.kwargs)
        if self.restart not in RESTART_TYPES:
            raise ConfigurationError(
                f"{owner}: restart must be one of {', '.join(RESTART_TYPES)}, got {self.restart!r}"
            )
        if self.shutdown_timeout is None:  # the class says how long its instances need
            msgspec.structs.force_setattr(self, "shutdown_timeout", getattr(
                factory, "shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT))
        check_shutdown_timeout(owner, self.shutdown_timeout)
        check_count(owner, "capacity", self.capacity, 1)
        if self.overflow not in OVERFLOW_POLICIES:
            raise ConfigurationError(
                f"{owner}: overflow must be one of {', '.join(OVERFLOW_POLICIES)}, "
                f"got {self.overflow!r}"
            )
        check_count(owner, "poison_after", self.poison_after, 1)

    @property
    def child_name(self) -> str | None:
        """The name given, or the nested supervisor's name."""
        from roost.actors.supervisor import SupervisorSpec

        if self.name is not None:
            return self.name
        if isinstance(self.factory, SupervisorSpec):
            return self.factory.name
        return None
