"""The `--store` option every offline command shares: a store folder or a PostgreSQL URL."""

from __future__ import annotations

from typing import Any


def add_store_option(parser: Any) -> None:
    """Add `--store` (default `.roost`) to a command's parser."""
    parser.add_argument("--store", default=".roost",
                        help="the store folder or postgresql:// URL (default: .roost)")
