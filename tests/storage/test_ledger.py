"""Tests of roost/storage/ledger.py: claims, settlements, retention and pruning, corrupt entries.

The ledger's specification runs against both stores (LMDB, and PostgreSQL in the session's
private server): the same claims, replays, conflicts and unknown outcomes on either.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from structlog.testing import capture_logs

from roost.errors import IdempotencyConflict, PermanentToolError, RecordCorrupt
from roost.storage import Ledger, LedgerEntry, Put, Store, StoreInterface
from roost.storage.ledger import ledger_key
from tests.support import FakeClock

pytestmark = pytest.mark.anyio

RETENTION = 10.0


@pytest.fixture
def store(either_store: StoreInterface) -> StoreInterface:
    return either_store


@pytest.fixture
def ledger(store: Store, clock: FakeClock) -> Ledger:
    return Ledger(store, retention=RETENTION, clock=clock)


async def test_a_claimed_key_is_in_flight_and_owned_by_the_claimer(ledger: Ledger) -> None:
    claim = await ledger.claim("send", "k", "fp-1")
    assert (claim.claimed, claim.ours) == (True, True)
    assert claim.entry == LedgerEntry(
        tool="send", key="k", fingerprint="fp-1", status="in_flight", owner=ledger.owner,
        started_at=1_000.0, updated_at=1_000.0, expires_at=1_000.0 + RETENTION,
    )
    assert await ledger.get("send", "k") == claim.entry


async def test_a_second_claim_reports_the_entry_and_whose_it_is(
    store: Store, ledger: Ledger, clock: FakeClock,
) -> None:
    first = await ledger.claim("send", "k", "fp-1")
    again = await ledger.claim("send", "k", "fp-1")
    assert (again.claimed, again.ours, again.entry) == (False, True, first.entry)
    other = await Ledger(store, retention=RETENTION, clock=clock).claim("send", "k", "fp-1")
    assert (other.claimed, other.ours, other.entry) == (False, False, first.entry)


async def test_a_claim_with_other_arguments_is_a_conflict(ledger: Ledger) -> None:
    await ledger.claim("send", "k", "fp-1")
    with pytest.raises(IdempotencyConflict, match="tool 'send': idempotency key 'k'"):
        await ledger.claim("send", "k", "fp-2")


async def test_keys_are_scoped_per_tool(ledger: Ledger) -> None:
    assert (await ledger.claim("send", "k", "fp-1")).claimed
    assert (await ledger.claim("charge", "k", "fp-2")).claimed


async def test_a_completed_call_keeps_its_result_for_the_retention_window_from_completion(
    ledger: Ledger, clock: FakeClock,
) -> None:
    entry = (await ledger.claim("send", "k", "fp-1")).entry
    clock.advance(4.0)
    await ledger.complete(entry, b"\xa2ok")
    stored = await ledger.get("send", "k")
    assert stored is not None
    assert (stored.status, stored.result, stored.started_at) == ("completed", b"\xa2ok", 1_000.0)
    assert (stored.updated_at, stored.expires_at) == (1_004.0, 1_004.0 + RETENTION)
    again = await ledger.claim("send", "k", "fp-1")
    assert (again.claimed, again.entry) == (False, stored)


async def test_a_permanent_failure_and_an_unrecordable_result_say_why(ledger: Ledger) -> None:
    failed = (await ledger.claim("send", "a", "fp")).entry
    await ledger.fail(failed, ValueError("card declined"))
    undone = (await ledger.claim("send", "b", "fp")).entry
    await ledger.unrecordable(undone, "TypeError: socket")
    a, b = await ledger.get("send", "a"), await ledger.get("send", "b")
    assert a is not None and (a.status, a.error_type, a.error) == (
        "failed", "ValueError", "card declined")
    assert b is not None and (b.status, b.error) == ("unrecordable", "TypeError: socket")


class Declined(Exception):
    def __init__(self, message: str, code: object) -> None:
        super().__init__(message)
        self.code = code


@pytest.mark.parametrize(
    ("error", "code"),
    [(PermanentToolError("card declined", code="card_declined"), "card_declined"),
     (Declined("card declined", 402), 402),
     (Declined("card declined", {"not": "a code"}), None),
     (Declined("card declined", True), None),
     (ValueError("card declined"), None)],
)
async def test_a_permanent_failure_keeps_its_type_message_and_a_str_or_int_code(
    ledger: Ledger, error: Exception, code: object,
) -> None:
    await ledger.fail((await ledger.claim("send", "a", "fp")).entry, error)
    stored = await ledger.get("send", "a")
    assert stored is not None
    assert (stored.error_type, stored.error, stored.error_code) == (
        type(error).__name__, "card declined", code)


async def test_a_released_key_can_be_claimed_again(ledger: Ledger) -> None:
    entry = (await ledger.claim("send", "k", "fp-1"))
    await ledger.release(entry.entry)
    assert await ledger.get("send", "k") is None
    assert (await ledger.claim("send", "k", "fp-1")).claimed


async def test_taking_over_a_key_left_in_flight_makes_this_ledger_its_owner(
    store: Store, ledger: Ledger, clock: FakeClock,
) -> None:
    left = (await Ledger(store, clock=clock).claim("send", "k", "fp-1")).entry
    clock.advance(3.0)
    mine = await ledger.take_over(left)
    assert (mine.owner, mine.status, mine.started_at) == (ledger.owner, "in_flight", 1_003.0)
    assert await ledger.get("send", "k") == mine
    assert (await ledger.claim("send", "k", "fp-1")).ours


async def test_a_person_settles_an_unknown_call_only_as_they_found_it(
    store: Store, ledger: Ledger, clock: FakeClock,
) -> None:
    left = (await Ledger(store, clock=clock).claim("send", "k", "fp-1")).entry
    assert await ledger.settle_unknown(left, result=b"\xa2ok")
    assert (await ledger.get("send", "k")).status == "completed"  # type: ignore[union-attr]
    assert not await ledger.settle_unknown(left)  # settled already: left as it is
    assert (await ledger.get("send", "k")).result == b"\xa2ok"  # type: ignore[union-attr]


async def test_settling_an_unknown_call_leaves_a_key_a_call_took_over_meanwhile(
    store: Store, ledger: Ledger, clock: FakeClock,
) -> None:
    left = (await Ledger(store, clock=clock).claim("send", "k", "fp-1")).entry
    clock.advance(1.0)
    running = await ledger.take_over(left)  # its verify hook found it not done: it runs again

    assert not await ledger.settle_unknown(left)  # forgetting it would free a running key

    assert await ledger.get("send", "k") == running


async def test_taking_over_a_key_a_person_settled_meanwhile_leaves_their_settlement(
    store: Store, ledger: Ledger, clock: FakeClock,
) -> None:
    left = (await Ledger(store, clock=clock).claim("send", "k", "fp-1")).entry
    assert await ledger.settle_unknown(left, result=b"\xa2ok")

    assert await ledger.take_over(left) is None  # found in flight before the settlement

    assert (await ledger.get("send", "k")).result == b"\xa2ok"  # type: ignore[union-attr]


async def test_settled_entries_survive_reopening_the_store(
        open_either_store: Callable[[], Any]) -> None:
    async with open_either_store() as store:
        ledger = Ledger(store)
        await ledger.complete((await ledger.claim("send", "k", "fp-1")).entry, b"\x01")
    async with open_either_store() as store:
        claim = await Ledger(store).claim("send", "k", "fp-1")
    assert (claim.claimed, claim.ours, claim.entry.status, claim.entry.result) == (
        False, False, "completed", b"\x01")


# --- retention ------------------------------------------------------------------------------


async def test_an_expired_key_is_claimed_afresh_even_with_other_arguments(
    ledger: Ledger, clock: FakeClock,
) -> None:
    await ledger.complete((await ledger.claim("send", "k", "fp-1")).entry, b"\x01")
    clock.advance(RETENTION)
    claim = await ledger.claim("send", "k", "fp-2")
    assert (claim.claimed, claim.entry.fingerprint, claim.entry.status) == (
        True, "fp-2", "in_flight")


async def test_prune_deletes_exactly_the_settled_entries_past_their_retention(
    ledger: Ledger, clock: FakeClock,
) -> None:
    await ledger.complete((await ledger.claim("send", "old", "fp")).entry, b"\x01")
    await ledger.claim("send", "old-in-flight", "fp")
    clock.advance(6.0)
    await ledger.complete((await ledger.claim("send", "new", "fp")).entry, b"\x02")
    clock.advance(4.0)  # "old" and "old-in-flight" expire now; "new" in 6 s
    assert await ledger.prune() == 1
    assert await ledger.get("send", "old") is None
    assert await ledger.get("send", "new") is not None
    assert await ledger.prune() == 0
    # A call left in flight has an unknown outcome: it is kept (and still blocks its key)
    # until a verify hook or a person settles it, however old it is.
    kept = await ledger.get("send", "old-in-flight")
    assert kept is not None and kept.status == "in_flight"
    again = await ledger.claim("send", "old-in-flight", "fp")
    assert not again.claimed and again.entry.status == "in_flight"


class ClaimDuringScan:
    """A store whose scan lets another caller's write land after the last entry was read.

    The real scan reads in worker threads and gives the event loop back between
    chunks, so any claim made meanwhile can commit before prune's deletes.
    """

    def __init__(self, store: Store, meanwhile: Callable[[], Awaitable[object]]) -> None:
        self._store = store
        self._meanwhile = meanwhile

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def scan(self, db: str, **options: Any) -> AsyncIterator[tuple[bytes, bytes]]:
        async for item in self._store.scan(db, **options):
            yield item
        await self._meanwhile()


async def test_prune_keeps_a_key_that_was_claimed_again_while_it_scanned(
    store: Store, clock: FakeClock,
) -> None:
    ledger = Ledger(store, retention=RETENTION, clock=clock)
    await ledger.complete((await ledger.claim("send", "k", "fp-1")).entry, b"\x01")
    clock.advance(RETENTION)
    reclaimed: list[LedgerEntry] = []

    async def claim_again() -> None:
        reclaimed.append((await ledger.claim("send", "k", "fp-2")).entry)

    racing = Ledger(ClaimDuringScan(store, claim_again), retention=RETENTION,  # type: ignore[arg-type]
                    clock=clock)
    await racing.prune()
    assert await ledger.get("send", "k") == reclaimed[0], (
        "prune deleted a fresh in-flight claim: its delete did not check the entry again")


# --- corrupt entries ------------------------------------------------------------------------


async def test_a_corrupt_entry_raises_record_corrupt_naming_the_key(store: Store,
                                                                   ledger: Ledger) -> None:
    await store.commit([Put("ledger", ledger_key("send", "k"), b"\x93not an entry")])
    with pytest.raises(RecordCorrupt, match=r"ledger_entry record at key b'send\\x00k'"):
        await ledger.get("send", "k")
    with pytest.raises(RecordCorrupt, match=r"ledger_entry record at key b'send\\x00k'"):
        await ledger.claim("send", "k", "fp-1")
    await store.commit([Put("ledger", ledger_key("send", "j"), b"\xc1")])
    with pytest.raises(RecordCorrupt, match="not a msgpack record"):
        await ledger.get("send", "j")


async def test_in_flight_lists_the_unsettled_calls_oldest_first_and_names_a_corrupt_one(
        store: Store, ledger: Ledger, clock: FakeClock) -> None:
    late = (await ledger.claim("send", "b", "fp")).entry
    clock.advance(-1.0)  # claimed earlier, though written later
    early = (await ledger.claim("send", "a", "fp")).entry
    clock.advance(0.5)
    other = (await ledger.claim("charge", "c", "fp")).entry
    await ledger.complete((await ledger.claim("send", "done", "fp")).entry, b"\xc0")
    await store.commit([Put("ledger", ledger_key("send", "bad"), b"\xc1")])

    with capture_logs() as logs:
        listed = await ledger.in_flight("send")

    assert listed == [early, late]
    assert await ledger.in_flight() == [early, other, late]
    assert [log["key"] for log in logs if log["event"] == "ledger_entry_corrupt"] == [
        b"send\x00bad"]


# --- the ledger against a model -------------------------------------------------------------


KEYS = st.sampled_from(["a", "b", "c"])
PRINTS = st.sampled_from(["fp-1", "fp-2"])


class LedgerMachine(RuleBasedStateMachine):
    """Random claims, settlements, releases, clock steps and prunes against a dict model."""

    def __init__(self) -> None:
        super().__init__()
        self.folder = tempfile.TemporaryDirectory(prefix="roost-ledger-")
        self.runner = asyncio.Runner()
        self.store = self.runner.run(self._open())
        self.clock = FakeClock()
        self.ledger = Ledger(self.store, retention=RETENTION, clock=self.clock)
        self.model: dict[str, tuple[str, str, float]] = {}  # key -> (fingerprint, status, expires)
        self.entries: dict[str, LedgerEntry] = {}

    async def _open(self) -> Store:
        return await Store.open(Path(self.folder.name), durability="async")

    def live(self, key: str) -> tuple[str, str, float] | None:
        """The entry a claim sees: settled ones until they expire, in-flight ones forever."""
        found = self.model.get(key)
        if found is None:
            return None
        return found if found[2] > self.clock.now or found[1] == "in_flight" else None

    @rule(key=KEYS, fp=PRINTS)
    def claim(self, key: str, fp: str) -> None:
        live = self.live(key)
        if live is not None and live[0] != fp:
            with pytest.raises(IdempotencyConflict):
                self.runner.run(self.ledger.claim("t", key, fp))
            return
        claim = self.runner.run(self.ledger.claim("t", key, fp))
        assert claim.claimed == (live is None)
        if claim.claimed:
            self.model[key] = (fp, "in_flight", self.clock.now + RETENTION)
            self.entries[key] = claim.entry
        else:
            assert (claim.entry.fingerprint, claim.entry.status) == live[:2]  # type: ignore[index]

    @rule(key=KEYS, outcome=st.sampled_from(["complete", "fail", "release"]))
    def settle(self, key: str, outcome: str) -> None:
        found = self.model.get(key)
        if found is None or found[1] != "in_flight":
            return
        entry = self.entries[key]
        if outcome == "complete":
            self.runner.run(self.ledger.complete(entry, key.encode()))
            self.model[key] = (found[0], "completed", self.clock.now + RETENTION)
        elif outcome == "fail":
            self.runner.run(self.ledger.fail(entry, RuntimeError(key)))
            self.model[key] = (found[0], "failed", self.clock.now + RETENTION)
        else:
            self.runner.run(self.ledger.release(entry))
            del self.model[key]

    @rule(seconds=st.sampled_from([1.0, 4.0, RETENTION]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def prune(self) -> None:
        expired = {key for key, (_, status, expires) in self.model.items()
                   if expires <= self.clock.now and status != "in_flight"}
        assert self.runner.run(self.ledger.prune()) == len(expired)
        for key in expired:
            del self.model[key]

    @invariant()
    def the_store_matches_the_model(self) -> None:
        for key in ("a", "b", "c"):
            stored = self.runner.run(self.ledger.get("t", key))
            expected = self.model.get(key)
            if expected is None:
                assert stored is None
            else:
                assert stored is not None
                assert (stored.fingerprint, stored.status, stored.expires_at) == expected

    def teardown(self) -> None:
        self.runner.run(self.store.close())
        self.runner.close()
        self.folder.cleanup()


LedgerMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=20,
                                           deadline=None)
test_the_ledger_behaves_like_its_model = LedgerMachine.TestCase


async def test_a_corrupt_entry_says_to_check_the_store_and_restore_it_from_a_backup(
        store: Store, ledger: Ledger) -> None:
    await store.commit([Put("ledger", ledger_key("send", "k"), b"\x93not an entry")])

    with pytest.raises(RecordCorrupt, match=r"ledger_entry record at key b'send\\x00k' does not "
                                            r"decode: .*; run `roost store check` on the store .*"
                                            "restore the store from a backup"):
        await ledger.get("send", "k")
