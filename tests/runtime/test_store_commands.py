"""Tests of roost/runtime/store_commands.py: `roost store check` and `roost store backup`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import msgspec
import pytest

from roost.runtime.cli import main
from roost.storage import Put, Store

ROOST = [sys.executable, "-m", "roost.runtime.cli"]


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


@pytest.mark.parametrize("command", [["check"], ["backup", "DEST"]])
def test_a_file_given_as_the_store_is_a_clear_error_not_a_traceback(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], command: list[str]) -> None:
    (tmp_path / "notes.txt").write_text("not a store")
    args = [str(tmp_path / "copy") if word == "DEST" else word for word in command]

    code = main(["store", args[0], str(tmp_path / "notes.txt"), *args[1:]])

    err = capfd.readouterr().err
    assert code == 1
    assert err.startswith("roost: StoreUnavailable:") and "Traceback" not in err


def test_backup_into_an_empty_destination_is_refused_and_writes_nothing_in_the_working_folder(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    anyio.run(a_store, tmp_path / "live")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")

    code = main(["store", "backup", str(tmp_path / "live"), ""])

    assert code == 2
    assert capfd.readouterr().err == (
        "roost: the backup destination is empty (''), which would mean the current folder; "
        "give the path of a new or empty folder for the copy\n")
    assert list((tmp_path / "work").iterdir()) == []


def as_nobody(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`roost ARGS` run in `cwd` as user nobody (the tests run as root, whom no permission
    stops); skips the test where that cannot be done."""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and runuser to run roost as another user")
    command = ["runuser", "-u", "nobody", "--", *ROOST]
    if subprocess.run([*command, "--help"], cwd=cwd, capture_output=True, timeout=30).returncode:
        pytest.skip("user nobody cannot run this checkout's python")
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("args", [["store", "check", "store"], ["store", "backup", "store", "copy"],
                                  ["runs", "--store", "store"], ["gates", "--store", "store"]],
                         ids=["store check", "store backup", "runs", "gates"])
def test_a_store_folder_this_user_may_not_read_is_a_one_line_error_not_a_traceback(
        tmp_path: Path, args: list[str]) -> None:
    anyio.run(a_store, tmp_path / "store")
    tmp_path.chmod(0o755)  # nobody may look in here, but not into the store
    (tmp_path / "store").chmod(0o000)

    result = as_nobody(*args, cwd=tmp_path)

    assert (result.returncode, result.stdout) == (1, "")
    (line,) = result.stderr.splitlines()
    assert line.startswith("roost: StoreUnavailable: cannot open the store at 'store': permission "
                           "denied ("), line
    assert line.endswith("); give this process read and write access to the folder and its "
                         "files")
    assert not (tmp_path / "copy").exists()


def test_reading_a_folder_whose_data_file_was_deleted_reports_the_damage(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    anyio.run(a_store, tmp_path)
    (tmp_path / "data.mdb").unlink()

    code = main(["runs", "--store", str(tmp_path)])

    err = capfd.readouterr().err
    assert code == 1
    assert "StoreCorrupt" in err and "data file data.mdb is missing" in err


def test_check_writes_a_key_with_a_nul_as_an_escape(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    async def damaged_gate() -> None:
        async with Store.open(tmp_path) as store:
            await store.commit([Put("gates", b"run-1\x00review", b"\xc1 not msgpack")])

    anyio.run(damaged_gate)

    code = main(["store", "check", str(tmp_path)])

    out = capfd.readouterr().out
    assert code == 1
    assert "unreadable: gates[run-1\\x00review]:" in out and "\x00" not in out


def id_file_not_text(store: Path) -> None:
    (store / "roost.id").write_bytes(b"\xff\xfenot an id")


def id_file_a_folder(store: Path) -> None:
    (store / "roost.id").unlink()
    (store / "roost.id").mkdir()


def data_file_a_folder(store: Path) -> None:
    (store / "data.mdb").unlink()
    (store / "data.mdb").mkdir()


def data_file_a_symlink_loop(store: Path) -> None:
    (store / "data.mdb").unlink()
    (store / "data.mdb").symlink_to(store / "data.mdb")


@pytest.mark.parametrize(("damage", "detail"), [
    (id_file_not_text, "its store id file roost.id cannot be read (it is not text"),
    (id_file_a_folder, "its store id file roost.id cannot be read (Is a directory"),
    (data_file_a_folder, "its data file data.mdb is a folder, not a file"),
    (data_file_a_symlink_loop, "its data file data.mdb cannot be read (Too many levels of "
                               "symbolic links)")],
    ids=["id not text", "id a folder", "data a folder", "data a symlink loop"])
@pytest.mark.parametrize("args", [["store", "check", "store"], ["store", "backup", "store", "copy"],
                                  ["runs", "--store", "store"], ["gates", "--store", "store"],
                                  ["decide", "run-1", "review", "approve", "--by", "ann",
                                   "--store", "store"]],
                         ids=["store check", "store backup", "runs", "gates", "decide"])
def test_an_odd_file_in_the_store_folder_is_a_one_line_store_corrupt_not_a_traceback(
        tmp_path: Path, args: list[str], damage: Callable[[Path], None], detail: str) -> None:
    anyio.run(a_store, tmp_path / "store")
    damage(tmp_path / "store")

    result = subprocess.run([*ROOST, *args], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)

    assert (result.returncode, result.stdout) == (1, "")
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"roost: StoreCorrupt: the store at 'store' is damaged: {detail}"), line
    assert "restore the folder from a backup" in line
