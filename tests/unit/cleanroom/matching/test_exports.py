"""The matching modules' `__all__` say what they offer: every name listed exists, every public one is listed.

A stale list hides a function other modules rely on (or names one that is gone), and `from ... import *` and the
docs' readers then see another module than the one that runs.
"""

from __future__ import annotations

import importlib
import inspect

import pytest

MODULES = ["cleanroom.matching.join", "cleanroom.matching.progress"]


@pytest.mark.parametrize("name", MODULES)
def test_all_lists_exactly_the_public_functions_and_classes_defined_there(name):
    module = importlib.import_module(name)
    listed = set(module.__all__)
    assert len(listed) == len(module.__all__), "a name listed twice"
    assert sorted(n for n in listed if not hasattr(module, n)) == []
    defined = {
        n
        for n, value in vars(module).items()
        if not n.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value))
        and value.__module__ == module.__name__
    }
    assert sorted(defined - listed) == [], "public but not in __all__"
