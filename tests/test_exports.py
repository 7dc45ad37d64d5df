"""Every public name is exported once: `roost.__all__` and each subpackage's `__all__` (after trio)."""

from __future__ import annotations

import importlib
import types
from typing import Any

import pytest

import roost

PACKAGES = [
    "roost", "roost.actors", "roost.mailbox", "roost.pipelines", "roost.runtime", "roost.storage",
    "roost.tools", "roost.tracing",
]


def public_names(module: types.ModuleType) -> set[str]:
    """Names a reader would take for public API: not private, not submodules, not `annotations`."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType) and name != "annotations"
    }


@pytest.mark.parametrize("package", PACKAGES)
def test_every_name_in_all_is_importable(package: str) -> None:
    module = importlib.import_module(package)

    missing = [name for name in module.__all__ if not hasattr(module, name)]

    assert missing == []


@pytest.mark.parametrize("package", PACKAGES)
def test_every_name_in_all_is_listed_once(package: str) -> None:
    module = importlib.import_module(package)

    repeated = sorted({name for name in module.__all__ if module.__all__.count(name) > 1})

    assert repeated == []


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_of_a_package_is_in_its_all(package: str) -> None:
    module = importlib.import_module(package)

    assert public_names(module) - set(module.__all__) == set()


@pytest.mark.parametrize("package", PACKAGES)
def test_star_import_gives_exactly_the_names_in_all(package: str) -> None:
    namespace: dict[str, Any] = {}
    exec(f"from {package} import *", namespace)
    namespace.pop("__builtins__")

    assert set(namespace) == set(importlib.import_module(package).__all__)


def test_the_top_level_names_are_the_same_objects_as_in_their_subpackages() -> None:
    homes = {
        name: importlib.import_module(package)
        for package in PACKAGES[1:]
        for name in importlib.import_module(package).__all__
    }

    for name in roost.__all__:
        if name in homes:
            assert getattr(roost, name) is getattr(homes[name], name), name


def test_every_exception_in_the_top_level_api_derives_from_roost_error() -> None:
    exceptions = [
        value
        for name in roost.__all__
        if isinstance(value := getattr(roost, name), type) and issubclass(value, BaseException)
    ]

    assert exceptions
    assert all(issubclass(error, roost.RoostError) for error in exceptions)
