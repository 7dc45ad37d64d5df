"""What the offline commands share about their store: the `--store` option (a store folder
or a PostgreSQL URL), and how a listing says which records it left out as damaged."""

from __future__ import annotations

import sys
from typing import Any


def add_store_option(parser: Any) -> None:
    """Add `--store` (default `.roost`) to a command's parser."""
    parser.add_argument("--store", default=".roost",
                        help="the store folder or postgresql:// URL (default: .roost)")


def report_damaged(kind: str, names: list[str], store: str) -> None:
    """Say on stderr that the `kind` records named in `names` ("run", "gate") do not decode
    and were left out of a listing of the store at `store`, and what to do."""
    print(f"roost: {len(names)} {kind} record(s) do not decode and are left out of the list: "
          f"{', '.join(names)}; run `roost store check {store}` with the system and console "
          "that use the store stopped, and restore the store from a backup if it reports "
          "damage", file=sys.stderr)
