"""Load a bootstrap script for `roost run`: a file, a folder, or `module:attr`.

A script defines its root either as `async def main(system)` (run until it
returns) or as `root = roost.Supervisor.spec(...)` (run until the tree stops).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from roost.actors.supervisor import SupervisorSpec
from roost.errors import BootstrapError

#: Names looked up, in order, when a script does not say which attribute is its root.
ROOT_NAMES = ("main", "root", "tree", "app")

Root = SupervisorSpec | Callable[[Any], Awaitable[Any]]


def load_root(target: str) -> Root:
    """Load the root that `target` defines.

    Args:
        target: a Python file, a folder holding `app.py` (or `__main__.py`), or
            `module:attr` (a dotted module importable from the current folder).

    Raises:
        BootstrapError: the script is missing, does not load, or defines no root.
    """
    module_name, _, attr = target.partition(":") if _looks_like_module(target) else (target, "", "")
    module = _import_module(module_name) if attr else _load_file(Path(target))
    return _find_root(module, target, attr or None)


def _looks_like_module(target: str) -> bool:
    head = target.split(":", 1)[0]
    return ":" in target and not head.endswith(".py") and not Path(head).exists()


def _load_file(path: Path) -> Any:
    if path.is_dir():
        candidates = [path / "app.py", path / "__main__.py"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise BootstrapError(
                f"{path}: folder has no app.py or __main__.py to run; put the root in {path}/app.py"
            )
        path = found
    if not path.is_file():
        raise BootstrapError(f"{path}: bootstrap script not found; check the path")
    try:
        source = path.read_text()
        code = compile(source, str(path), "exec")
    except SyntaxError as error:
        raise BootstrapError(
            f"{path}: syntax error on line {error.lineno}: {error.msg}"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise BootstrapError(f"{path}: cannot read the script: {error}") from None
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # lets the script import its sibling modules
    name = f"roost_bootstrap_{path.stem}"
    spec = importlib.util.spec_from_loader(name, loader=None, origin=str(path))
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(path)
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    except Exception as error:
        raise BootstrapError(
            f"{path}: failed while loading: {type(error).__name__}: {error}"
        ) from error
    return module


def _import_module(name: str) -> Any:
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        raise BootstrapError(f"{name}: module not found ({error}); check the module path") from None
    except SyntaxError as error:
        raise BootstrapError(
            f"{name}: syntax error in {error.filename} on line {error.lineno}: {error.msg}"
        ) from None
    except Exception as error:
        raise BootstrapError(
            f"{name}: failed while loading: {type(error).__name__}: {error}"
        ) from error


def _find_root(module: Any, target: str, attr: str | None) -> Root:
    names = (attr,) if attr else ROOT_NAMES
    for name in names:
        value = getattr(module, name, None)
        if value is None:
            continue
        if isinstance(value, SupervisorSpec):
            return value
        if inspect.isfunction(value) and not inspect.iscoroutinefunction(value):
            raise BootstrapError(
                f"{target}: {name!r} is a plain function; define it as `async def {name}(system)` "
                "(roost awaits it, and the process ends when it returns)")
        if callable(value) and not isinstance(value, type):
            return value  # type: ignore[no-any-return]
        raise BootstrapError(
            f"{target}: {name!r} is a {type(value).__name__}, not a SupervisorSpec or "
            "`async def main(system)`"
        )
    if attr:
        raise BootstrapError(f"{target}: the module has no attribute {attr!r}")
    raise BootstrapError(
        f"{target}: defines no root; define `async def main(system)` or "
        "`root = roost.Supervisor.spec(...)`"
    )
