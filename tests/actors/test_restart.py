"""Tests of roost/actors/_restart.py: the restart decision and the restart-intensity window."""

from __future__ import annotations

import pytest

from roost.actors._restart import RestartIntensity, restarts_in_a_row, should_restart

# Every restart type against both kinds of exit: OTP's table, written out in full.
RESTART_TABLE = [
    ("permanent", True, True),
    ("permanent", False, True),
    ("transient", True, True),
    ("transient", False, False),
    ("temporary", True, False),
    ("temporary", False, False),
]


@pytest.mark.parametrize(("restart", "abnormal", "expected"), RESTART_TABLE)
def test_the_restart_decision_follows_the_restart_type_and_the_kind_of_exit(
    restart: str, abnormal: bool, expected: bool
) -> None:
    assert should_restart(restart, abnormal) is expected


def test_the_restart_table_covers_every_restart_type_and_exit_kind() -> None:
    from roost.actors.child_spec import RESTART_TYPES

    assert {(r, a) for r, a, _ in RESTART_TABLE} == {
        (r, a) for r in RESTART_TYPES for a in (True, False)
    }


def test_restarts_up_to_the_limit_are_allowed_and_the_next_one_is_refused() -> None:
    intensity = RestartIntensity(3, 5.0)
    assert [intensity.allow(t) for t in (0.0, 1.0, 2.0)] == [True, True, True]
    assert intensity.allow(3.0) is False
    assert len(intensity) == 3


def test_a_refused_restart_is_not_recorded() -> None:
    intensity = RestartIntensity(1, 5.0)
    assert intensity.allow(0.0) is True
    assert intensity.allow(1.0) is False
    assert intensity.allow(2.0) is False
    assert len(intensity) == 1
    # Only the restart at 0.0 counts, so the window is free again at 5.0.
    assert intensity.allow(5.0) is True


def test_restarts_older_than_the_window_no_longer_count() -> None:
    intensity = RestartIntensity(2, 10.0)
    assert intensity.allow(0.0)
    assert intensity.allow(4.0)
    assert not intensity.allow(9.999)
    # At 10.0 the restart at 0.0 is exactly `within` old and leaves the window.
    assert intensity.allow(10.0)
    assert not intensity.allow(13.9)
    # At 14.0 the restart at 4.0 leaves it too.
    assert intensity.allow(14.0)
    assert len(intensity) == 2


def test_zero_max_restarts_refuses_the_first_restart() -> None:
    intensity = RestartIntensity(0, 60.0)
    assert intensity.allow(0.0) is False
    assert intensity.allow(1000.0) is False
    assert len(intensity) == 0


def test_restarts_spread_wider_than_the_window_are_always_allowed() -> None:
    intensity = RestartIntensity(1, 1.0)
    assert all(intensity.allow(float(t)) for t in range(0, 100, 2))
    assert len(intensity) == 1


@pytest.mark.parametrize(
    ("previous", "ran_for", "expected"),
    [
        (0, 0.0, 1),  # the first failure
        (0, 100.0, 1),
        (1, 0.5, 2),  # crashed again soon after its restart
        (5, 9.999, 6),
        (5, 10.0, 1),  # ran cleanly for reset_after since its last restart: a new series
        (5, float("inf"), 1),  # never (re)started under this supervisor
    ],
)
def test_restarts_in_a_row_reset_only_after_clean_running_since_the_last_restart(
    previous: int, ran_for: float, expected: int
) -> None:
    assert restarts_in_a_row(previous, ran_for, reset_after=10.0) == expected
