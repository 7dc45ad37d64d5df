"""Specifications of `roost.storage.gates`: listing gate records, damaged ones included."""

from __future__ import annotations

import pytest

from roost.errors import RecordCorrupt
from roost.storage import Put, Store
from roost.storage.gates import (
    CLOSED,
    DECIDED,
    PENDING,
    Decision,
    GateRecord,
    GateStore,
    deadline_key,
    gate_key,
    gate_of_key,
)
from tests.support import FakeClock

pytestmark = pytest.mark.anyio


@pytest.fixture
def gates(store: Store, clock: FakeClock) -> GateStore:
    return GateStore(store, clock=clock)


async def stored_gates(store: Store, gates: GateStore) -> None:
    """Gates a/one (pending, with a deadline) and b/two (decided), and a damaged c/three."""
    for run_id, gate, status in (("a", "one", PENDING), ("b", "two", DECIDED)):
        record = GateRecord(run_id=run_id, gate=gate, pipeline="p", step=gate, status=status,
                            opened_at=1.0, deadline=None if status == DECIDED else 5.0)
        await store.commit(gates.open_ops(record))
    await store.commit([Put("gates", gate_key("c", "three"), b"\xc1")])


async def test_list_raises_record_corrupt_for_a_damaged_record_without_a_damaged_list(
        store: Store, gates: GateStore) -> None:
    await stored_gates(store, gates)

    with pytest.raises(RecordCorrupt, match=r"gate record at key b'c\\x00three' does not decode"):
        await gates.list()


@pytest.mark.parametrize(("status", "listed"), [
    (None, [("a", "one"), ("b", "two")]), (PENDING, [("a", "one")]), (DECIDED, [("b", "two")])])
async def test_list_given_a_damaged_list_skips_undecodable_records_whatever_the_status(
        store: Store, gates: GateStore, status: str | None, listed: list[tuple[str, str]]
        ) -> None:
    await stored_gates(store, gates)

    damaged: list[RecordCorrupt] = []
    records = await gates.list(status=status, damaged=damaged)

    assert [(r.run_id, r.gate) for r in records] == listed
    assert [(error.kind, error.key) for error in damaged] == [("gate", b"c\x00three")]
    # The deadline index entry is in the database, neither listed nor taken for damage.
    assert await store.get("gates", deadline_key(5.0, "a", "one")) is not None


@pytest.mark.parametrize(("key", "named"), [
    (b"run-1\x00review", ("run-1", "review")),
    (b"run-1\x00draft/review", ("run-1", "draft/review")),
    (b"no-separator", None),
    (b"\x00gate", None),
    (b"run-1\x00", None),
    (b"\xc3(\x00gate", None),  # not UTF-8
])
def test_a_gate_key_names_its_run_and_gate_or_nothing_when_damaged(
        key: bytes, named: tuple[str, str] | None) -> None:
    assert gate_of_key(key) == named


async def test_a_damaged_gate_record_says_to_check_the_store_and_restore_it_from_a_backup(
        store: Store, gates: GateStore) -> None:
    await stored_gates(store, gates)

    with pytest.raises(RecordCorrupt, match=r"gate record at key b'c\\x00three' does not decode: "
                                            r".*; run `roost store check` on the store .*restore "
                                            "the store from a backup"):
        await gates.get("c", "three")


async def test_closing_a_gate_read_as_pending_keeps_a_decision_made_since(
        store: Store, gates: GateStore) -> None:
    await stored_gates(store, gates)
    (read,) = await gates.of_run("a")  # pending when read
    await store.commit([gates.decide_op("a", "one", Decision("approve", None, "ana", 2.0))])

    await store.commit(gates.close_ops([read], "the run was cancelled"))

    (kept,) = await gates.of_run("a")
    assert (kept.status, kept.decision, kept.by) == (DECIDED, "approve", "ana")


async def test_closing_a_pending_gate_records_why_and_drops_its_deadline(
        store: Store, gates: GateStore) -> None:
    await stored_gates(store, gates)

    await store.commit(gates.close_ops(await gates.of_run("a"), "its run ended failed"))

    (closed,) = await gates.of_run("a")
    assert closed.status == CLOSED
    assert (closed.history[-1].what, closed.history[-1].detail) == ("closed", "its run ended failed")
    assert await store.get("gates", deadline_key(5.0, "a", "one")) is None
