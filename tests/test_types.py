"""The package type-checks: mypy finds no errors in roost/ (STYLE: type hints throughout)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_finds_no_type_errors_in_the_package() -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "roost"], cwd=ROOT, capture_output=True, text=True,
        timeout=240,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
