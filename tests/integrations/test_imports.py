"""The integrations are optional: ``import torchvalley`` never imports a training framework,
and importing an integration without its framework says how to install it."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

FRAMEWORKS = ("lightning", "pytorch_lightning", "transformers", "accelerate")


def test_import_torchvalley_imports_no_framework():
    code = (
        "import sys, torchvalley, torchvalley.optim, torchvalley.integrations\n"
        f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r})\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize(
    "module, framework",
    [
        ("torchvalley.integrations.lightning", "lightning.pytorch"),
        ("torchvalley.integrations.hf", "transformers"),
    ],
)
def test_missing_framework_gives_the_install_hint(monkeypatch, module, framework):
    monkeypatch.setitem(sys.modules, framework, None)  # makes `import framework` fail
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ImportError, match=r"pip install 'torchvalley\[integrations\]'"):
        importlib.import_module(module)
