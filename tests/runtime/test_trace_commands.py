"""Tests of roost/runtime/trace_commands.py: `roost trace` and `roost runs` as real processes."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp.test_utils import TestClient, TestServer

import roost
from roost.console import create_app
from roost.storage import Put, Store
from roost.tracing import SpanKind
from tests.support import into_a_closed_pipe

REPO = Path(__file__).resolve().parents[2]
ROOST = [sys.executable, "-m", "roost.runtime.cli"]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
RED = "\x1b[31m"


def roost_command(*args: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key != "NO_COLOR"}
    return subprocess.run([*ROOST, *args], cwd=REPO, capture_output=True, text=True, timeout=30,
                          env=environment)


async def record_email_run(folder: Path) -> None:
    """A stopped system's store with one run's spans: run > (classify, draft > send_email)."""
    prices = {"gpt": roost.Price(input_per_million=2.0, output_per_million=8.0)}
    async with roost.ActorSystem(store=folder, prices=prices, log_format="json",
                                 log_level="warning") as system:
        tracer = system.tracer
        run = tracer.start("run support-email", SpanKind.RUN, trace_id=TRACE_ID, run_id="email-0042")
        classify = run.child("step classify", SpanKind.STEP)
        classify.usage(roost.Usage("gpt", 1000, 50))
        classify.end()
        draft = run.child("step draft", SpanKind.STEP)
        send = draft.child("tool send_email", SpanKind.TOOL_CALL)
        send.fail(ConnectionError("smtp refused"))
        send.end()
        draft.fail(RuntimeError("send failed"))
        draft.end()
        run.end()


@pytest.fixture
def email_store(tmp_path: Path) -> Path:
    anyio.run(record_email_run, tmp_path / "store")
    return tmp_path / "store"


# --- roost trace ------------------------------------------------------------------------------


def label(line: str) -> str:
    """A waterfall line's indented span name: what comes before its bar."""
    return line[:next(at for at, char in enumerate(line) if char in "█·")].rstrip()


def test_trace_prints_a_waterfall_of_the_runs_spans_with_tokens_cost_and_errors(
        email_store: Path) -> None:
    result = roost_command("trace", "email-0042", "--store", str(email_store))

    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.startswith(f"trace {TRACE_ID}  run email-0042  ")
    assert "4 spans  2 errors  1050 tokens (1000 in, 50 out)  cost 0.0024" in header
    assert [label(line) for line in lines] == [
        "run support-email", "  step classify", "  step draft", "    tool send_email"]
    bars = ["".join(char for char in line if char in "█·") for line in lines]
    assert all(len(bar) == 40 for bar in bars)
    assert bars[0] == "█" * 40  # the run spans the whole trace
    assert lines[1].endswith("ok  1050 tokens  cost 0.0024")
    assert lines[2].endswith("error RuntimeError: send failed")
    assert lines[3].endswith("error ConnectionError: smtp refused")
    assert RED not in result.stdout  # not a terminal: no colour


def test_trace_by_trace_id_shows_the_same_run(email_store: Path) -> None:
    by_trace = roost_command("trace", TRACE_ID, "--store", str(email_store))
    by_run = roost_command("trace", "email-0042", "--store", str(email_store))

    assert by_trace.returncode == 0 and by_trace.stdout == by_run.stdout


def test_trace_on_a_terminal_shows_errors_in_red(email_store: Path) -> None:
    leader, follower = pty.openpty()
    try:
        process = subprocess.run([*ROOST, "trace", "email-0042", "--store", str(email_store)],
                                 cwd=REPO, stdout=follower, stderr=subprocess.PIPE, timeout=30,
                                 env={key: value for key, value in os.environ.items()
                                      if key != "NO_COLOR"})
        os.close(follower)
        output = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal's other end is closed: all is read
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(leader)

    assert process.returncode == 0
    text = output.decode()
    assert f"{RED}error RuntimeError: send failed" in text
    assert f"{RED}ok" not in text


def test_trace_json_prints_the_raw_spans(email_store: Path) -> None:
    result = roost_command("trace", "email-0042", "--store", str(email_store), "--json")

    assert result.returncode == 0, result.stderr
    spans: list[dict[str, Any]] = json.loads(result.stdout)
    by_name = {span["name"]: span for span in spans}
    assert [span["name"] for span in spans] == ["run support-email", "step classify", "step draft",
                                               "tool send_email"]
    assert by_name["tool send_email"]["parent_span_id"] == by_name["step draft"]["span_id"]
    assert by_name["step classify"]["attributes"]["gen_ai.usage.input_tokens"] == 1000
    assert all(span["trace_id"] == TRACE_ID and span["record"] == "span" for span in spans)


def test_span_records_that_do_not_decode_are_left_out_named_on_stderr_and_exit_1(
        email_store: Path) -> None:
    async def corrupt_every_span() -> None:
        async with Store.open(email_store) as store:
            keys = [key async for key, _ in store.scan("traces", prefix=b"t/")]
            await store.commit([Put("traces", key, b"\xc1") for key in keys])

    anyio.run(corrupt_every_span)

    result = roost_command("trace", "email-0042", "--store", str(email_store))

    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith(f"trace {TRACE_ID}  run email-0042  ")
    assert "0 spans" in result.stdout
    assert "roost: 4 span record(s) did not decode and were left out: b't/" in result.stderr


def test_an_unknown_id_says_so_on_stderr_and_exits_1(email_store: Path) -> None:
    result = roost_command("trace", "email-9999", "--store", str(email_store))

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("roost: no run or trace named 'email-9999'")


async def record_untraced_run(folder: Path) -> None:
    """A stopped system's store with run `quiet-1`, recorded with tracing off."""
    async with roost.ActorSystem(store=folder, tracing=False, log_format="json",
                                 log_level="critical") as system:
        pipeline = roost.Pipeline("support-email", [roost.Step("draft", Draft)])
        await (await system.pipelines.start(pipeline, run_id="quiet-1")).result()


def test_a_run_without_a_kept_trace_is_said_to_exist_and_exits_1(tmp_path: Path) -> None:
    anyio.run(record_untraced_run, tmp_path / "store")

    result = roost_command("trace", "quiet-1", "--store", str(tmp_path / "store"))

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("roost: run 'quiet-1' exists but its trace is not kept in "
                                    "the store at ")
    assert "tracing off, or the trace is past the system's trace_retention" in result.stderr


def test_an_empty_id_is_refused_in_one_line_and_exits_1(email_store: Path) -> None:
    result = roost_command("trace", "", "--store", str(email_store))

    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == ("roost: ConfigurationError: run or trace id '' must be a non-empty "
                             "string\n")


def test_a_reader_that_stops_reading_ends_the_trace_quietly_with_exit_1(
        email_store: Path) -> None:
    result = into_a_closed_pipe(REPO, "trace", "email-0042", "--store", str(email_store))

    assert (result.returncode, result.stderr) == (1, "")


def test_a_folder_without_a_store_exits_1_and_creates_nothing(tmp_path: Path) -> None:
    result = roost_command("trace", "email-0042", "--store", str(tmp_path / "none"))

    assert result.returncode == 1
    assert "StoreUnavailable" in result.stderr and "there is no store in this folder" in result.stderr
    assert not (tmp_path / "none").exists()


def test_a_store_held_by_a_running_system_is_refused_naming_its_pid(email_store: Path) -> None:
    async def while_open() -> subprocess.CompletedProcess[str]:
        async with Store.open(email_store):
            return await anyio.to_thread.run_sync(
                lambda: roost_command("trace", "email-0042", "--store", str(email_store)))

    result = anyio.run(while_open)

    assert result.returncode == 1
    assert f"a running system has it open (pid {os.getpid()})" in result.stderr


# --- roost runs -------------------------------------------------------------------------------


class Draft(roost.Actor):
    async def receive(self, message: roost.RunStep) -> dict[str, Any]:
        return {"text": "hi", "usage": roost.Usage("gpt", 100, 20)}


class Refuse(roost.Actor):
    async def receive(self, message: roost.RunStep) -> str:
        raise ValueError("refused")


async def record_runs(folder: Path) -> None:
    prices = {"gpt": roost.Price(input_per_million=1.0, output_per_million=2.0)}
    email = roost.Pipeline("support-email", [roost.Step("draft", Draft),
                                             roost.Step("check", Draft, after="draft")])
    billing = roost.Pipeline("billing", [roost.Step("charge", Refuse)])
    async with roost.ActorSystem(store=folder, prices=prices, log_format="json",
                                 log_level="critical") as system:
        for run_id, pipeline in (("email-1", email), ("bill-1", billing), ("email-2", email)):
            handle = await system.pipelines.start(pipeline, run_id=run_id)
            try:
                await handle.result()
            except roost.StepFailed:
                assert pipeline is billing


@pytest.fixture
def runs_store(tmp_path: Path) -> Path:
    anyio.run(record_runs, tmp_path / "store")
    return tmp_path / "store"


def table(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.splitlines()]


def test_runs_lists_runs_newest_first_with_status_pipeline_steps_tokens_and_cost(
        runs_store: Path) -> None:
    result = roost_command("runs", "--store", str(runs_store))

    assert result.returncode == 0, result.stderr
    header, *rows = table(result.stdout)
    assert header == ["RUN", "STATUS", "PIPELINE", "STARTED", "DURATION", "STEPS", "TOKENS", "COST"]
    assert [row[:3] for row in rows] == [["email-2", "completed", "support-email"],
                                         ["bill-1", "failed", "billing"],
                                         ["email-1", "completed", "support-email"]]
    email = rows[0]  # STARTED is a date and a time: two words
    assert email[6:] == ["2", "240", f"{(200 * 1.0 + 40 * 2.0) / 1e6:.6g}"]
    assert email[5].endswith(("µs", "ms", "s"))
    assert rows[1][6:] == ["1", "-", "-"]


def test_runs_counts_the_steps_that_ran_as_the_console_does(tmp_path: Path) -> None:
    # A skipped step did not run; an optional step that failed, and the step a run failed
    # at, did.
    chain = roost.Pipeline("chain", [
        roost.Step("draft", Draft),
        roost.Step("translate", Draft, after="draft", when=lambda results: False),
        roost.Step("lint", Refuse, after="draft", optional=True),
        roost.Step("send", Refuse, after="lint")])

    async def run() -> dict[str, int]:
        async with roost.ActorSystem(store=tmp_path / "store", log_format="json",
                                     log_level="critical") as system:
            with pytest.raises(roost.StepFailed):
                await (await system.pipelines.start(chain, run_id="chain-1")).result()
            app = create_app(system, token="t" * 20)
            async with TestClient(TestServer(app, host="127.0.0.1")) as client:
                answer = await client.get("/api/v1/runs",
                                          headers={"Authorization": "Bearer " + "t" * 20})
                return {row["run_id"]: row["steps"] for row in (await answer.json())["items"]}

    console = anyio.run(run)
    result = roost_command("runs", "--store", str(tmp_path / "store"))

    (row,) = table(result.stdout)[1:]
    assert console == {"chain-1": 3}
    assert row[0] == "chain-1" and row[6] == "3"


def test_runs_filters_by_status_and_pipeline_and_limits(runs_store: Path) -> None:
    failed = roost_command("runs", "--store", str(runs_store), "--status", "failed")
    email = roost_command("runs", "--store", str(runs_store), "--pipeline", "support-email",
                          "--limit", "1")

    assert [row[0] for row in table(failed.stdout)[1:]] == ["bill-1"]
    assert [row[0] for row in table(email.stdout)[1:]] == ["email-2"]


def test_runs_refuses_a_bad_limit_or_status_naming_it(runs_store: Path) -> None:
    limit = roost_command("runs", "--store", str(runs_store), "--limit", "0")
    status = roost_command("runs", "--store", str(runs_store), "--status", "done")

    assert limit.returncode == 2 and "'0' is not a positive whole number" in limit.stderr
    assert status.returncode == 2 and "invalid choice: 'done'" in status.stderr


def damage(folder: Path, db: str, *keys: bytes) -> None:
    """Overwrite the records at `keys` of database `db` with bytes that do not decode."""
    async def write() -> None:
        async with Store.open(folder) as store:
            await store.commit([Put(db, key, b"\xc1") for key in keys])

    anyio.run(write)


def test_runs_lists_the_readable_runs_names_the_damaged_records_and_exits_1(
        runs_store: Path) -> None:
    damage(runs_store, "runs", b"bill-1", b"\xc3(")

    result = roost_command("runs", "--store", str(runs_store))
    failed = roost_command("runs", "--store", str(runs_store), "--status", "failed")

    assert result.returncode == 1
    assert [row[0] for row in table(result.stdout)[1:]] == ["email-2", "email-1"]
    assert result.stderr == (
        "roost: 2 run record(s) do not decode and are left out of the list: "
        "the one at key b'\\xc3(', 'bill-1'; "  # in the order read: last run id first
        f"run `roost store check {runs_store}` with the system and console that use the store "
        "stopped, and restore the store from a backup if it reports damage\n")
    assert (failed.returncode, table(failed.stdout)[1:]) == (1, [])
    assert "'bill-1'" in failed.stderr  # its status cannot be read: it may be a failed run
