"""roost type-checks, and ships its annotations to users' type checkers (`py.typed`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

USER_SCRIPT = '''
import msgspec
import roost


class Greet(roost.Message):
    name: str


class Tally(msgspec.Struct):
    count: int = 0


class Greeter(roost.Actor):
    state_type = Tally

    async def receive(self, message: object) -> str:
        match message:
            case Greet(name=name):
                return f"hello {name}"
        return "?"


async def main() -> None:
    async with roost.ActorSystem(store=".roost") as system:
        greeter: roost.ActorRef = system.spawn(Greeter, name="greeter")
        greeter.tell(Greet("ada"))
        reply = await greeter.ask(Greet("bob"), timeout=1.0)
        print(reply)
'''


def mypy(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", *args], cwd=cwd, capture_output=True,
        text=True, timeout=240, env=env,
    )


def test_mypy_finds_no_type_errors_in_the_package() -> None:
    checked = mypy("roost", cwd=ROOT)

    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_users_script_is_checked_against_roosts_own_annotations(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(USER_SCRIPT)
    (tmp_path / "wrong.py").write_text("import roost\nretry: int = roost.Retry(attempts=3)\n")
    # On PYTHONPATH roost counts as an installed package: mypy reads it only if it has py.typed.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    good = mypy("app.py", cwd=tmp_path, env=env)
    wrong = mypy("wrong.py", cwd=tmp_path, env=env)

    assert good.returncode == 0, good.stdout + good.stderr
    assert 'expression has type "Retry", variable has type "int"' in wrong.stdout, wrong.stdout
