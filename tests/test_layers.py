"""roost's packages depend one way: mailbox <- actors <- tools <- pipelines <- console <- runtime,
and cluster (a system's node on a PostgreSQL store) between pipelines and runtime.

`storage`, `tracing`, `errors`, `trace` and `_validate` sit below all of them. Every import is
read from the source with `ast`, including imports inside functions and under
`if TYPE_CHECKING:`, so a cycle cannot hide behind a lazy import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "roost"

FOUNDATION = {"roost.errors", "roost.trace", "roost._validate", "roost._logging", "roost._histogram",
              "roost._completion", "roost.storage", "roost.tracing"}

#: What each layer may import from roost, besides itself.
ALLOWED: dict[str, set[str]] = {
    "roost.errors": set(),
    "roost.trace": set(),
    "roost._validate": {"roost.errors"},
    "roost._logging": set(),
    "roost._histogram": set(),
    "roost._completion": set(),
    "roost.storage": {"roost.errors", "roost.trace", "roost._validate", "roost._logging",
                      "roost._histogram", "roost._completion"},
    "roost.tracing": {"roost.errors", "roost.trace", "roost._validate", "roost._logging",
                      "roost._histogram", "roost._completion", "roost.storage"},
    "roost.mailbox": FOUNDATION,
    "roost.actors": FOUNDATION | {"roost.mailbox"},
    "roost.tools": FOUNDATION | {"roost.mailbox", "roost.actors"},
    "roost.pipelines": FOUNDATION | {"roost.mailbox", "roost.actors", "roost.tools"},
    "roost.console": FOUNDATION | {"roost.mailbox", "roost.actors", "roost.tools",
                                   "roost.pipelines"},
    "roost.cluster": FOUNDATION | {"roost.mailbox", "roost.actors", "roost.tools",
                                   "roost.pipelines"},
    "roost.runtime": FOUNDATION | {"roost.mailbox", "roost.actors", "roost.tools",
                                   "roost.pipelines", "roost.console", "roost.cluster"},
}


def layer_of(module: str) -> str:
    """`roost.actors._cell` -> `roost.actors`; `roost.errors` -> `roost.errors`."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def roost_imports(source: str, package: str) -> set[str]:
    """Every roost module `source` (a module of `package`) imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join([*base, node.module] if node.module else base))
            elif node.module is not None:
                found.add(node.module)
    return {name for name in found if name == "roost" or name.startswith("roost.")}


def modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if p != ROOT / "__init__.py")


def test_every_roost_package_has_a_place_in_the_layers() -> None:
    layers = {layer_of(module_name(path)) for path in modules()}

    assert layers - set(ALLOWED) == set()


@pytest.mark.parametrize("path", modules(), ids=lambda p: module_name(p))
def test_a_module_imports_only_from_its_own_layer_or_the_layers_below(path: Path) -> None:
    layer = layer_of(module_name(path))
    allowed = ALLOWED[layer] | {layer}

    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]

    imported = roost_imports(path.read_text(), package)
    wrong = sorted(module for module in imported if layer_of(module) not in allowed)

    assert wrong == [], f"{module_name(path)} ({layer}) imports against the layers: {wrong}"


def test_the_check_sees_lazy_type_checking_and_relative_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from roost.pipelines.run import RunActor\n"
        "def f():\n    import roost.runtime.system\n"
        "from ..tools import spec\n"
        "from . import _cell\n"
    )

    imported = roost_imports(source, "roost.actors")

    assert imported == {"roost.pipelines.run", "roost.runtime.system", "roost.tools", "roost.actors"}
