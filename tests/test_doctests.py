"""Every example in the package's docstrings runs and gives the output it shows."""

import doctest
import importlib
import pkgutil

import pytest

import torchvalley

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(torchvalley.__path__, prefix="torchvalley.")
    if not info.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    if name.startswith("torchvalley.integrations."):
        pytest.importorskip("lightning" if name.endswith("lightning") else "transformers")
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
