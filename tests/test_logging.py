"""Tests of roost/_logging.py: a log write that fails never raises into the runtime."""

from __future__ import annotations

import errno
from typing import Any

import anyio
import pytest
import structlog

import roost
from roost._logging import SafeLogger, get_logger

pytestmark = pytest.mark.anyio


def full_disk(*_: Any) -> Any:
    raise OSError(errno.ENOSPC, "No space left on device (the log file)")


def test_a_failing_log_write_is_dropped_and_counted() -> None:
    structlog.configure(processors=[full_disk])
    before = SafeLogger.failures

    get_logger("roost").error("something_happened", detail="x")

    assert SafeLogger.failures == before + 1


def test_a_logger_follows_structlog_configured_again_after_its_first_use() -> None:
    logger = get_logger("roost")
    with structlog.testing.capture_logs() as first:
        logger.info("before")
    with structlog.testing.capture_logs() as second:
        logger.info("after", n=2)
    structlog.configure(processors=[full_disk])
    before = SafeLogger.failures

    logger.info("dropped")

    assert [event["event"] for event in first] == ["before"]
    assert second == [{"event": "after", "n": 2, "log_level": "info"}]
    assert SafeLogger.failures == before + 1


class Flaky(roost.Actor):
    async def receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("boom")
        return self.ctx.restarts


async def test_supervision_and_shutdown_work_while_every_log_write_fails(tmp_path: Any) -> None:
    structlog.configure(processors=[full_disk])
    with anyio.fail_after(10):
        async with roost.ActorSystem(store=tmp_path, log_format=None) as system:
            flaky = system.spawn(Flaky, name="flaky")
            flaky.tell("crash")  # logged as actor_failed, then restarted by its supervisor
            while await flaky.ask("restarts?", timeout=5) == 0:  # noqa: ASYNC110
                await anyio.sleep(0.01)
            assert flaky.is_alive
