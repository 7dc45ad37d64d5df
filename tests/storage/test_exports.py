"""Specifications of `roost.storage`'s exports: every public name exported exactly once."""

from __future__ import annotations

import importlib
import inspect

import roost.storage

_PUBLIC_MODULES = ("checkpoints", "codecs", "ops", "runs", "store")


def test_every_exported_name_exists_and_is_listed_once() -> None:
    exported = roost.storage.__all__

    assert len(exported) == len(set(exported))
    assert all(hasattr(roost.storage, name) for name in exported)


def test_every_public_class_and_function_of_the_storage_modules_is_exported() -> None:
    defined = {
        name
        for module_name in _PUBLIC_MODULES
        for name, value in vars(importlib.import_module(f"roost.storage.{module_name}")).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == f"roost.storage.{module_name}"
    }

    assert defined <= set(roost.storage.__all__)
