"""``import torchvalley``: every optimizer registered, the heavy subpackages loaded on first use."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return done.stdout.strip()


def test_subpackages_are_attributes_after_import_torchvalley():
    # Regression: ``torchvalley.landscape.…`` used to fail without ``import torchvalley.landscape``.
    out = _run(
        "import torchvalley\n"
        "print(callable(torchvalley.landscape.hessian_eigenvalues),"
        " callable(torchvalley.testing.run_conformance),"
        " callable(torchvalley.dynamics.LangevinSplitting))"
    )
    assert out == "True True True"


def test_import_torchvalley_stays_light():
    out = _run(
        "import sys, torchvalley\n"
        "print(sorted(m for m in sys.modules if m.startswith(("
        "'torchvalley.landscape', 'torchvalley.bench', 'torchvalley.testing',"
        " 'torchvalley.integrations', 'matplotlib', 'sklearn'))))"
    )
    assert out == "[]"


def test_every_family_is_registered_by_import_torchvalley():
    out = _run(
        "import torchvalley\n"
        "print(' '.join(sorted({e.family for e in torchvalley.optimizer_entries()})))"
    )
    assert set(out.split()) >= {"baseline", "langevin", "riemannian", "sharpness-aware"}


def test_unknown_attribute_raises_attribute_error():
    import torchvalley

    with pytest.raises(AttributeError, match="no attribute 'nosuch'"):
        _ = torchvalley.nosuch
