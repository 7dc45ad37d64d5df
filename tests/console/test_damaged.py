"""A run whose records are missing or damaged in the store: the run page and
`GET /api/v1/runs/{id}` show everything that can be read and name what cannot, with what
to do, even when the run's own record does not decode; a single gate whose record does
not decode is a 422 problem naming it. Never an internal error.

Most damage is written straight through the store API into the console fixture's store
(runs `done`, `broken` and `angry`); a damaged run or gate record is written as a disk
fault would leave it: garbage over the value in the closed store's LMDB file, then served
by a store console (as `roost console --store` serves it).
"""

from __future__ import annotations

import html
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import lmdb
import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

import roost
from roost.console import create_app
from roost.console.app import AUTH
from roost.console.auth import COOKIE
from roost.pipelines.run import RunProgress
from roost.storage import (
    Checkpoint,
    CheckpointStore,
    Delete,
    Put,
    RecordCodec,
    RunStore,
    StepResults,
    checkpoint_key,
    encode_state,
)
from roost.storage.gates import GateRecord, gate_key
from roost.storage.results import result_key
from tests.console.conftest import TOKEN, Console, bearer, start_runs

pytestmark = pytest.mark.anyio

PROBLEM = "application/problem+json"
_GATE = RecordCodec(GateRecord)
_CHECKPOINT = RecordCodec(Checkpoint)


async def run_json(console: Console, run_id: str) -> Any:
    response = await console.client.get(f"/api/v1/runs/{run_id}", headers=bearer())
    assert response.status == 200, await response.text()
    return await response.json()


async def run_page(console: Console, run_id: str) -> str:
    """The run page's text, unescaped (asserting it was a 200)."""
    response = await console.client.get(f"/runs/{run_id}", headers=bearer())
    assert response.status == 200, await response.text()
    return html.unescape(await response.text())


async def pruned_run(console: Console) -> None:
    """Run `pruned`: its checkpoint names steps draft, review and send as done, but only
    draft's result is in the store."""
    store = console.system.store
    await RunStore(store).create("pruned", pipeline="support",
                                 input=msgspec.msgpack.encode("a pruned customer"))
    await store.commit([StepResults.put_op("pruned", "draft",
                                           msgspec.msgpack.encode({"text": "drafted"}))])
    progress = RunProgress(results={}, failures={}, reviews={}, skipped=[], trace_id="t1",
                           stored=["draft", "review", "send"])
    await CheckpointStore(store).save("pruned", step="send", actor_path="/runs/pruned",
                                      state=encode_state(progress))


async def next_checkpoint(console: Console, run_id: str, value: bytes) -> int:
    """Store `value` as run `run_id`'s next (latest) checkpoint; its sequence number."""
    latest = await console.system.pipelines.checkpoints.latest(run_id)
    seq = latest.seq + 1
    await console.system.store.commit([Put("checkpoints", checkpoint_key(run_id, seq), value)])
    return seq


# --- step results missing ---------------------------------------------------------------


async def test_the_api_lists_the_steps_whose_results_are_missing_and_shows_the_rest(
        console: Console) -> None:
    await pruned_run(console)

    view = await run_json(console, "pruned")

    assert view["run"]["run_id"] == "pruned" and view["run"]["status"] == "running"
    assert view["input"] == "a pruned customer"
    assert [(s["name"], s["outcome"], s["result"]) for s in view["steps"]] == [
        ("draft", "completed", {"text": "drafted"}),
        ("review", "result_missing", None), ("send", "result_missing", None)]
    assert view["missing_results"] == ["review", "send"]
    [problem] = view["problems"]
    assert "the results of steps 'review', 'send' of run 'pruned' are not in the store" in problem
    assert f"roost store check {console.system.store.path}" in problem
    assert [c["step"] for c in view["checkpoints"]] == ["send"]


async def test_a_single_missing_result_is_named_in_the_singular(console: Console) -> None:
    await console.system.store.commit([StepResults.put_op("pruned", "review", b"\xa2ok")])
    await pruned_run(console)

    view = await run_json(console, "pruned")

    assert view["missing_results"] == ["send"]
    assert "the result of step 'send' of run 'pruned' is not in the store" in view["problems"][0]


async def test_the_runs_list_still_shows_a_run_whose_results_are_missing(
        console: Console) -> None:
    await pruned_run(console)

    response = await console.client.get("/api/v1/runs", headers=bearer())

    rows = {row["run_id"]: row for row in (await response.json())["items"]}
    assert response.status == 200 and rows["pruned"]["steps"] == 3


async def test_the_run_page_marks_the_missing_results_and_shows_the_rest(
        console: Console) -> None:
    await pruned_run(console)

    page = await run_page(console, "pruned")

    assert "Part of this run cannot be read from the store" in page
    assert "the results of steps 'review', 'send' of run 'pruned' are not in the store" in page
    assert "roost store check" in page
    assert "drafted" in page and page.count(">result_missing</span>") == 2
    assert page.count("its result is not in the store") == 2


async def test_a_real_run_whose_result_was_deleted_keeps_its_trace_and_gates(
        console: Console) -> None:
    await console.system.store.commit([Delete("results", result_key("angry", "draft"))])

    view = await run_json(console, "angry")
    page = await run_page(console, "angry")

    assert view["missing_results"] == ["draft"]
    assert [g["gate"] for g in view["gates"]] == ["send"]
    assert "the result of step 'draft' of run 'angry' is not in the store" in page
    assert 'class="waterfall"' in page and "an angry customer <script>" in page


# --- a damaged checkpoint ---------------------------------------------------------------


async def test_a_latest_checkpoint_that_does_not_decode_is_named_and_the_record_shown(
        console: Console) -> None:
    seq = await next_checkpoint(console, "done", b"not a checkpoint")

    view = await run_json(console, "done")
    page = await run_page(console, "done")

    [problem] = view["problems"]
    assert problem.startswith(f"checkpoint {seq} of run 'done' does not decode")
    assert "the steps shown are those the run's record keeps" in problem
    assert "roost store check" in problem
    assert [(s["name"], s["outcome"]) for s in view["steps"]] == [("draft", "completed"),
                                                                   ("send", "completed")]
    assert [c["seq"] for c in view["checkpoints"]] == list(range(1, seq))
    assert problem in page and 'class="waterfall"' in page


async def test_an_older_checkpoint_that_does_not_decode_leaves_the_latest_in_charge(
        console: Console) -> None:
    await console.system.store.commit([Put("checkpoints", checkpoint_key("angry", 1), b"junk")])

    view = await run_json(console, "angry")

    [problem] = view["problems"]
    assert problem.startswith("checkpoint 1 of run 'angry' does not decode")
    assert "record keeps" not in problem
    assert [(s["name"], s["outcome"]) for s in view["steps"]] == [("draft", "completed")]


async def test_a_checkpoint_stored_under_another_runs_key_is_left_out(console: Console) -> None:
    [checkpoint, *_] = await console.system.pipelines.checkpoints.list("done")
    own = await console.system.pipelines.checkpoints.list("angry")
    await console.system.store.commit([Put("checkpoints", checkpoint_key("angry", 1),
                                           _CHECKPOINT.encode(checkpoint))])

    view = await run_json(console, "angry")

    assert view["problems"][0].startswith("checkpoint 1 of run 'angry' says it is checkpoint 1 "
                                          "of run 'done'")
    assert [c["seq"] for c in view["checkpoints"]] == [c.seq for c in own[1:]]


async def test_a_latest_checkpoint_that_holds_no_run_progress_is_named(
        console: Console) -> None:
    await CheckpointStore(console.system.store).save("done", step="send", actor_path="/x",
                                                     state=b"not progress")

    view = await run_json(console, "done")

    [problem] = view["problems"]
    assert "the latest checkpoint of run 'done'" in problem
    assert "does not hold a run's progress" in problem
    assert [s["name"] for s in view["steps"]] == ["draft", "send"]


async def test_the_runs_list_shows_a_run_whose_latest_checkpoint_does_not_decode(
        console: Console) -> None:
    await next_checkpoint(console, "done", b"not a checkpoint")

    response = await console.client.get("/api/v1/runs", headers=bearer())

    rows = {row["run_id"]: row for row in (await response.json())["items"]}
    assert response.status == 200 and rows["done"]["status"] == "completed"
    assert (await console.client.get("/runs", headers=bearer())).status == 200


# --- a damaged gate record ---------------------------------------------------------------


async def test_a_gate_record_that_does_not_decode_is_named_and_the_other_gates_shown(
        console: Console) -> None:
    await console.system.store.commit([Put("gates", gate_key("angry", "review"), b"junk")])

    view = await run_json(console, "angry")
    page = await run_page(console, "angry")

    [problem] = view["problems"]
    assert problem.startswith("the record of gate 'review' of run 'angry' does not decode")
    assert "roost store check" in problem
    assert [g["gate"] for g in view["gates"]] == ["send"]
    assert problem in page and "an angry customer <script>" in page


async def test_a_gate_whose_shown_data_is_not_json_is_named(console: Console) -> None:
    record = await console.system.gates.get("angry", "send")
    damaged = msgspec.structs.replace(record, gate="retry", shown=b"{not json")
    await console.system.store.commit([Put("gates", gate_key("angry", "retry"),
                                           _GATE.encode(damaged))])

    view = await run_json(console, "angry")

    [problem] = view["problems"]
    assert problem.startswith("the record of gate 'retry' of run 'angry' holds JSON that does "
                              "not decode")
    assert [g["gate"] for g in view["gates"]] == ["send"]


# --- an unreadable trace ----------------------------------------------------------------


async def test_a_trace_that_cannot_be_read_is_named_on_the_page_and_the_run_shown(
        console: Console) -> None:
    await console.system.store.commit([Put("traces", b"r/done\x00\xff\xfe", b"")])

    page = await run_page(console, "done")

    assert "The trace of run 'done' cannot be read (UnicodeDecodeError" in page
    assert "roost store check" in page
    assert "reply to a happy customer" in page and 'class="waterfall"' not in page


async def test_a_trace_that_cannot_be_read_is_a_named_problem_in_the_api(
        console: Console) -> None:
    await console.system.store.commit([Put("traces", b"r/done\x00\xff\xfe", b"")])

    response = await console.client.get("/api/v1/runs/done/trace", headers=bearer())

    assert response.status == 500 and response.content_type == PROBLEM
    body = await response.json()
    assert body["title"] == "Unreadable trace"
    assert body["detail"].startswith("the trace of run 'done' cannot be read")
    assert "roost store check" in body["detail"]
    assert (await run_json(console, "done"))["problems"] == []


async def damage_a_span(console: Console, run_id: str) -> int:
    """Overwrite one span record of run `run_id`'s trace with bytes that do not decode;
    the number of spans the trace had."""
    response = await console.client.get(f"/api/v1/runs/{run_id}/trace", headers=bearer())
    trace = await response.json()
    prefix = b"t/" + trace["trace_id"].encode() + b"\x00"
    keys = [key async for key, _ in console.system.store.scan("traces", prefix=prefix)]
    await console.system.store.commit([Put("traces", keys[-1], b"\xc1")])
    return len(trace["spans"])


async def test_a_span_record_that_does_not_decode_is_left_out_of_the_trace_and_named(
        console: Console) -> None:
    spans = await damage_a_span(console, "done")

    response = await console.client.get("/api/v1/runs/done/trace", headers=bearer())

    assert response.status == 200
    trace = await response.json()
    assert len(trace["spans"]) == spans - 1
    [problem] = trace["problems"]
    assert problem.startswith("a span record of this trace does not decode (b't/")
    assert "it is left out of the trace" in problem and "restore the store" in problem


async def test_a_trace_whose_records_all_decode_names_no_problem(console: Console) -> None:
    response = await console.client.get("/api/v1/runs/done/trace", headers=bearer())

    assert (await response.json())["problems"] == []


async def test_the_run_page_shows_a_damaged_span_record_in_red_beside_the_waterfall(
        console: Console) -> None:
    await damage_a_span(console, "done")

    page = await run_page(console, "done")

    assert '<div class="damage" role="alert">' in page
    assert "Part of this trace cannot be read from the store" in page
    assert "a span record of this trace does not decode (b't/" in page
    assert 'class="waterfall"' in page


async def forget_every_trace(console: Console) -> None:
    """Delete every trace record, as trace retention leaves a store after its runs."""
    await console.system.traces.get("done")  # the spans still buffered are written first
    keys = [key async for key, _ in console.system.store.scan("traces")]
    await console.system.store.commit([Delete("traces", key) for key in keys])


async def test_a_run_whose_trace_is_not_kept_is_a_404_saying_the_run_exists(
        console: Console) -> None:
    await forget_every_trace(console)

    response = await console.client.get("/api/v1/runs/done/trace", headers=bearer())

    assert response.status == 404 and response.content_type == PROBLEM
    assert (await response.json())["detail"] == (
        "run 'done' exists but its trace is not kept in the store: its system ran with tracing "
        "off, or the trace is past the system's trace_retention")


async def test_the_page_of_a_run_whose_trace_is_not_kept_says_why_and_shows_the_run(
        console: Console) -> None:
    await forget_every_trace(console)

    page = await run_page(console, "done")

    assert "The store keeps no trace of this run: its system ran with tracing off, or the " \
           "trace is past the system's trace_retention." in page
    assert "reply to a happy customer" in page and 'class="waterfall"' not in page


# --- a run or gate record damaged on disk ------------------------------------------------


async def closed_store(tmp_path: Path) -> Path:
    """A store folder, closed, holding the runs of `start_runs`."""
    folder = tmp_path / "closed"
    async with roost.ActorSystem(store=folder, tracing=True) as system:
        await start_runs(system)
    return folder


def overwrite(folder: Path, database: str, key: bytes) -> None:
    """Overwrite the value at `key` of `database` in the closed store at `folder` with
    garbage, as a disk fault would."""
    env = lmdb.open(str(folder), max_dbs=64)
    try:
        with env.begin(db=env.open_db(database.encode(), create=False), write=True) as txn:
            assert txn.replace(key, b"\xc1\xff garbage \x00\x01") is not None, key
    finally:
        env.close()


@asynccontextmanager
async def store_console(folder: Path) -> AsyncIterator[TestClient[Any, Any]]:
    """A console over the store at `folder` alone, as `roost console --store` serves it."""
    async with roost.ActorSystem(store=folder, tracing=True) as system:
        app = create_app(system, token=TOKEN, live=False)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            yield client


async def test_a_run_whose_record_does_not_decode_is_shown_from_its_other_records(
        tmp_path: Path) -> None:
    folder = await closed_store(tmp_path)
    overwrite(folder, "runs", b"angry")

    async with store_console(folder) as client:
        response = await client.get("/api/v1/runs/angry", headers=bearer())
        view = await response.json()

    assert response.status == 200, view
    [problem] = view["problems"]
    assert problem.startswith("the record of run 'angry' does not decode (the bytes are not a "
                              "msgpack record")
    assert "status, input and times cannot be shown" in problem
    assert f"run `roost store check {folder}`" in problem
    assert (view["run"], view["input"]) == (None, None)
    assert [(s["name"], s["outcome"]) for s in view["steps"]] == [("draft", "completed")]
    assert view["steps"][0]["result"]["text"] == "reply to an angry customer"
    assert view["checkpoints"] and [g["gate"] for g in view["gates"]] == ["send"]


async def test_the_trace_of_a_run_whose_record_does_not_decode_is_still_answered(
        tmp_path: Path) -> None:
    folder = await closed_store(tmp_path)
    overwrite(folder, "runs", b"angry")

    async with store_console(folder) as client:
        response = await client.get("/api/v1/runs/angry/trace", headers=bearer())
        trace = await response.json()

    assert response.status == 200, trace
    assert trace["run_id"] == "angry" and trace["spans"]


async def test_the_page_of_a_run_whose_record_does_not_decode_names_it_and_shows_the_rest(
        tmp_path: Path) -> None:
    folder = await closed_store(tmp_path)
    overwrite(folder, "runs", b"angry")

    async with store_console(folder) as client:
        response = await client.get("/runs/angry", headers=bearer())
        page = html.unescape(await response.text())

    assert response.status == 200
    assert "<h1>Run <code>angry</code></h1>" in page
    assert "Part of this run cannot be read from the store" in page
    assert "the record of run 'angry' does not decode" in page and "roost store check" in page
    assert "Its input is kept in its record, which cannot be read." in page
    assert "reply to an angry customer" in page and "an angry customer <script>" in page
    assert 'class="waterfall"' in page


async def test_a_gate_whose_record_does_not_decode_is_a_422_problem_naming_it(
        tmp_path: Path) -> None:
    folder = await closed_store(tmp_path)
    overwrite(folder, "gates", gate_key("angry", "send"))

    async with store_console(folder) as client:
        response = await client.get("/api/v1/gates/angry/send", headers=bearer())
        body = await response.json()
        run = await (await client.get("/api/v1/runs/angry", headers=bearer())).json()

    assert response.status == 422 and response.content_type == PROBLEM
    assert body["title"] == "Unreadable record"
    assert body["detail"].startswith("the record of gate 'send' of run 'angry' does not decode")
    assert f"run `roost store check {folder}`" in body["detail"]
    assert run["gates"] == []
    assert [p.split(" does not decode")[0] for p in run["problems"]] == [
        "the record of gate 'send' of run 'angry'"]


async def test_asking_for_a_missing_gate_beside_a_damaged_one_names_the_damaged_record(
        tmp_path: Path) -> None:
    # The not-found answer lists the run's gates, which cannot all be read.
    folder = await closed_store(tmp_path)
    overwrite(folder, "gates", gate_key("angry", "send"))

    async with store_console(folder) as client:
        response = await client.get("/api/v1/gates/angry/review", headers=bearer())
        body = await response.json()

    assert response.status == 422 and body["title"] == "Unreadable record"
    assert body["detail"].startswith("the record of gate 'send' of run 'angry' does not decode")


@pytest.mark.parametrize(("database", "key", "named"), [
    ("gates", gate_key("angry", "send"), "the record of gate 'send' of run 'angry'"),
    ("runs", b"angry", "the record of run 'angry'"),
])
async def test_deciding_a_gate_whose_or_whose_runs_record_does_not_decode_is_a_422(
        tmp_path: Path, database: str, key: bytes, named: str) -> None:
    folder = await closed_store(tmp_path)
    overwrite(folder, database, key)

    async with store_console(folder) as client:
        response = await client.post("/api/v1/gates/angry/send/decision", headers=bearer(),
                                     json={"decision": "approve", "by": "ada"})
        body = await response.json()

    assert response.status == 422 and response.content_type == PROBLEM
    assert body["title"] == "Unreadable record"
    assert body["detail"].startswith(f"{named} does not decode")
    assert "roost store check" in body["detail"]


async def test_deciding_a_damaged_gate_from_its_form_is_a_422_page_naming_it(
        tmp_path: Path) -> None:
    folder = await closed_store(tmp_path)
    overwrite(folder, "gates", gate_key("angry", "send"))

    async with store_console(folder) as client:
        session_id, session = client.server.app[AUTH].sign_in("ada")
        response = await client.post("/gates/angry/send/decide",
                                     headers={"Cookie": f"{COOKIE}={session_id}"},
                                     data={"csrf": session.csrf, "decision": "approve"})
        page = html.unescape(await response.text())

    assert response.status == 422 and response.content_type == "text/html"
    assert "<h1>422 · Unreadable record</h1>" in page
    assert "the record of gate 'send' of run 'angry' does not decode" in page
    assert "roost store check" in page


# --- a damaged record in the runs list ---------------------------------------------------


async def runs_json(console: Console, **query: str) -> Any:
    response = await console.client.get("/api/v1/runs", params=query, headers=bearer())
    assert response.status == 200, await response.text()
    return await response.json()


async def test_the_runs_list_shows_the_runs_it_can_read_and_names_a_damaged_record(
        console: Console) -> None:
    await console.system.store.commit([Put("runs", b"cracked", b"junk")])

    listed = await runs_json(console)

    assert [row["run_id"] for row in listed["items"]] == ["done", "broken", "angry"]
    [problem] = listed["problems"]
    assert problem.startswith("the record of run 'cracked' does not decode (")
    assert "it is left out of this list" in problem
    assert f"run `roost store check {console.system.store.path}`" in problem
    assert "with the system and console that use the store stopped" in problem
    assert "restore the store from a backup if it reports damage" in problem
    assert (await runs_json(console, status="failed"))["problems"] == [problem]


async def test_the_runs_list_names_nothing_when_every_record_decodes(console: Console) -> None:
    assert (await runs_json(console))["problems"] == []


async def test_the_runs_page_shows_the_runs_it_can_read_and_the_damaged_record_in_red(
        console: Console) -> None:
    await console.system.store.commit([Put("runs", b"cracked", b"junk")])

    response = await console.client.get("/runs", headers=bearer())
    page = html.unescape(await response.text())

    assert response.status == 200
    assert '<div class="damage" role="alert">' in page
    assert "Some runs cannot be read from the store" in page
    assert "the record of run 'cracked' does not decode" in page and "roost store check" in page
    assert all(f'href="/runs/{run_id}"' in page for run_id in ("done", "broken", "angry"))


async def test_runs_pages_skip_a_damaged_record_without_counting_it_and_name_it_once(
        console: Console) -> None:
    # Newest first is by run id, descending: done, cracked (damaged), broken, angry.
    await console.system.store.commit([Put("runs", b"cracked", b"junk")])
    pages, cursor = [], None
    while True:
        page = await runs_json(console, limit="1", **({"cursor": cursor} if cursor else {}))
        pages.append(([row["run_id"] for row in page["items"]],
                      [problem.split(" does not decode")[0] for problem in page["problems"]]))
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert pages == [(["done"], []), (["broken"], ["the record of run 'cracked'"]),
                     (["angry"], [])]


async def test_a_damaged_run_record_whose_key_is_not_text_is_named_by_its_key(
        console: Console) -> None:
    await console.system.store.commit([Put("runs", b"\xc3(", b"junk")])

    [problem] = (await runs_json(console))["problems"]

    assert problem.startswith("the run record at key b'\\xc3(' does not decode")


# --- a damaged record in the gates inbox -------------------------------------------------


async def gates_json(console: Console, **query: str) -> Any:
    response = await console.client.get("/api/v1/gates", params=query, headers=bearer())
    assert response.status == 200, await response.text()
    return await response.json()


async def second_gate(console: Console, gate: str, **changes: Any) -> None:
    """Store a copy of run `angry`'s pending gate `send` as its gate `gate`, opened later."""
    record = await console.system.gates.get("angry", "send")
    copy = msgspec.structs.replace(record, gate=gate, opened_at=record.opened_at + 1, **changes)
    await console.system.store.commit([Put("gates", gate_key("angry", gate), _GATE.encode(copy))])


async def test_the_gates_inbox_shows_the_gates_it_can_read_and_names_a_damaged_record(
        console: Console) -> None:
    await console.system.store.commit([Put("gates", gate_key("cracked", "review"), b"junk")])

    pending = await gates_json(console)
    decided = await gates_json(console, status="decided")

    assert [(g["run_id"], g["gate"]) for g in pending["items"]] == [("angry", "send")]
    [problem] = pending["problems"]
    assert problem.startswith("the record of gate 'review' of run 'cracked' does not decode (")
    assert "it is left out of this list" in problem
    assert f"run `roost store check {console.system.store.path}`" in problem
    assert "restore the store from a backup if it reports damage" in problem
    assert (decided["items"], decided["problems"]) == ([], [problem])
    assert (await gates_json(console, assignee="nobody"))["problems"] == [problem]


async def test_the_gates_inbox_names_nothing_when_every_record_decodes(console: Console) -> None:
    assert (await gates_json(console))["problems"] == []
    assert (await gates_json(console, status="closed"))["problems"] == []


@pytest.mark.parametrize(("key", "named"), [
    (b"cracked\x00review\x00again", "the record of gate 'again' of run 'cracked\\x00review'"),
    (b"no-separator", "the gate record at key b'no-separator'"),
    (b"\xc3(\x00review", "the gate record at key b'\\xc3(\\x00review'"),
])
async def test_a_damaged_gate_record_is_named_by_its_run_and_gate_or_else_its_key(
        console: Console, key: bytes, named: str) -> None:
    await console.system.store.commit([Put("gates", key, b"junk")])

    [problem] = (await gates_json(console))["problems"]

    assert problem.startswith(f"{named} does not decode")


async def test_the_gates_pages_show_the_damaged_record_in_red_beside_the_gates(
        console: Console) -> None:
    await console.system.store.commit([Put("gates", gate_key("cracked", "review"), b"junk")])

    for status in ("pending", "decided"):
        response = await console.client.get("/gates", params={"status": status, "assignee": ""},
                                            headers=bearer())
        page = html.unescape(await response.text())

        assert response.status == 200
        assert '<div class="damage" role="alert">' in page
        assert "Some gates cannot be read from the store" in page
        assert "the record of gate 'review' of run 'cracked' does not decode" in page
        assert ("an angry customer <script>" in page) == (status == "pending")


async def test_gate_pages_follow_the_cursor_past_a_damaged_record_naming_it_on_each(
        console: Console) -> None:
    await second_gate(console, "retry")
    await console.system.store.commit([Put("gates", gate_key("angry", "broken"), b"junk")])

    first = await gates_json(console, limit="1")
    second = await gates_json(console, limit="1", cursor=first["next_cursor"])

    assert [g["gate"] for g in first["items"]] == ["send"]
    assert [g["gate"] for g in second["items"]] == ["retry"] and second["next_cursor"] is None
    assert first["problems"] == second["problems"]
    assert [p.split(" does not decode")[0] for p in first["problems"]] == [
        "the record of gate 'broken' of run 'angry'"]


async def test_a_gate_whose_json_does_not_decode_is_left_out_of_the_inbox_and_named(
        console: Console) -> None:
    await second_gate(console, "later", shown=b"{not json")
    await second_gate(console, "retry")  # opened with `later`: after it, by name

    whole = await gates_json(console, limit="2")
    first = await gates_json(console, limit="1")
    second = await gates_json(console, limit="1", cursor=first["next_cursor"])

    assert [g["gate"] for g in whole["items"]] == ["send", "retry"]
    assert whole["next_cursor"] is None
    [problem] = whole["problems"]
    assert problem.startswith("the record of gate 'later' of run 'angry' holds JSON that does "
                              "not decode")
    assert "it is left out of this list" in problem and "roost store check" in problem
    assert ([g["gate"] for g in first["items"]], first["problems"]) == (["send"], [])
    assert ([g["gate"] for g in second["items"]], second["problems"]) == (["retry"], [problem])
    assert second["next_cursor"] is None
