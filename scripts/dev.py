"""Set up (or reuse) .venv with roost and its test tools installed, then run a command in it.

Usage:
    python3 scripts/dev.py run PATH [ARGS...]   run a bootstrap script with `roost run`
    python3 scripts/dev.py test [PYTEST ARGS]   run the whole test suite (installs Debian's
                                                chromium for the browser tests and postgresql
                                                for the PostgreSQL store's tests when missing)
    python3 scripts/dev.py bench [ARGS...]      run the benches (`python -m benches`)

Only the Python standard library is used here, so it works on a fresh machine.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".roost-installed"
#: The browser the console's browser tests drive (they are skipped without it).
CHROMIUM = Path("/usr/bin/chromium")


def ensure_venv() -> Path:
    """Create .venv if missing and (re)install roost[test] when pyproject.toml changed."""
    python = BIN / "python"
    if not python.exists():
        print(f"creating virtual environment in {VENV}", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pyproject = ROOT / "pyproject.toml"
    if not STAMP.exists() or STAMP.read_text() != pyproject.read_text():
        print("installing roost[test] into .venv", file=sys.stderr)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "-e", f"{ROOT}[test]"],
            check=True,
        )
        STAMP.write_text(pyproject.read_text())
    return python


def ensure_chromium() -> None:
    """Install Debian's chromium with apt-get when it is missing (as root, non-interactively);
    where that cannot be done, say so and go on: the browser tests are then skipped."""
    if not CHROMIUM.exists():
        apt_install("chromium", f"{CHROMIUM} is missing", "the browser tests")


def ensure_postgres() -> None:
    """Install Debian's postgresql with apt-get when no `initdb` is found (the tests start a
    private server with it); where that cannot be done, say so: those tests are then skipped."""
    if shutil.which("initdb") is None and not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        apt_install("postgresql", "PostgreSQL's initdb is missing", "the PostgreSQL store's tests")


def apt_install(package: str, missing: str, tests: str) -> None:
    """Install Debian's `package` (as root, non-interactively), or say why not and go on."""
    if shutil.which("apt-get") is None or getattr(os, "geteuid", lambda: -1)() != 0:
        print(f"{missing} and cannot be installed here (that needs root and apt-get): {tests} "
              f"will be skipped; install Debian's {package} (sudo apt-get install {package}) "
              "to run them", file=sys.stderr)
        return
    print(f"installing {package} for {tests} (apt-get)", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        if subprocess.run(command, env=env).returncode != 0:
            print(f"`{' '.join(command)}` failed: {tests} will be skipped", file=sys.stderr)
            return


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"run", "test", "bench"}:
        print(__doc__, file=sys.stderr)
        return 2
    python = ensure_venv()
    command, rest = argv[0], argv[1:]
    if command == "run":
        args = [str(BIN / "roost"), "run", *rest]
    elif command == "test":
        ensure_chromium()
        ensure_postgres()
        args = [str(python), "-m", "pytest", *rest]
    else:
        args = [str(python), "-m", "benches", *rest]
    return subprocess.run(args, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
