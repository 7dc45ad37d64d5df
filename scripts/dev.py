"""Set up (or reuse) .venv with roost and its test tools installed, then run a command in it.

Usage:
    python3 scripts/dev.py run PATH [ARGS...]   run a bootstrap script with `roost run`
    python3 scripts/dev.py test [PYTEST ARGS]   run the whole test suite
    python3 scripts/dev.py bench [ARGS...]      run the benches (`python -m benches`)

Only the Python standard library is used here, so it works on a fresh machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".roost-installed"


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


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"run", "test", "bench"}:
        print(__doc__, file=sys.stderr)
        return 2
    python = ensure_venv()
    command, rest = argv[0], argv[1:]
    if command == "run":
        args = [str(BIN / "roost"), "run", *rest]
    elif command == "test":
        args = [str(python), "-m", "pytest", *rest]
    else:
        args = [str(python), "-m", "benches", *rest]
    return subprocess.run(args, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
