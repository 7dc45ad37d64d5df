"""Tests of roost/runtime/store_commands.py: `roost store check` and `roost store backup`."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import msgspec
import pytest

from roost.runtime.cli import main
from roost.storage import Put, Store


async def a_store(path: Path) -> None:
    async with Store.open(path) as store:
        await store.commit([Put("traces", b"k%03d" % i, msgspec.msgpack.encode({"n": i}))
                            for i in range(50)])


def test_check_reports_the_records_of_a_sound_store_and_exits_0(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    anyio.run(a_store, tmp_path)

    code = main(["store", "check", str(tmp_path)])

    out = capfd.readouterr().out
    assert code == 0
    assert "traces=50" in out and "every record decodes" in out


def test_check_of_a_truncated_store_exits_1_and_says_what_to_do(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    anyio.run(a_store, tmp_path)
    data = tmp_path / "data.mdb"
    os.truncate(data, data.stat().st_size // 2)

    code = main(["store", "check", str(tmp_path)])

    err = capfd.readouterr().err
    assert code == 1
    assert "StoreCorrupt" in err and "truncated" in err and "restore the folder from a backup" in err


def test_check_of_a_folder_without_a_store_creates_nothing(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code = main(["store", "check", str(tmp_path / "nothing")])

    assert code == 1
    assert "there is no store in this folder" in capfd.readouterr().err
    assert not (tmp_path / "nothing").exists()


def test_backup_makes_a_copy_that_check_accepts(tmp_path: Path,
                                                 capfd: pytest.CaptureFixture[str]) -> None:
    anyio.run(a_store, tmp_path / "live")

    assert main(["store", "backup", str(tmp_path / "live"), str(tmp_path / "copy")]) == 0
    assert main(["store", "check", str(tmp_path / "copy")]) == 0
    assert "traces=50" in capfd.readouterr().out
