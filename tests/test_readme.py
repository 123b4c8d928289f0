"""The README's Python snippets run, in order, as one script (a snippet using a name it never
defines, or an API that moved, fails here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_python_snippets():
    assert len(_blocks()) >= 5


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_readme_snippets_run_in_order():
    namespace: dict[str, object] = {"__name__": "readme"}
    for index, block in enumerate(_blocks()):
        try:
            exec(compile(block, f"README.md block {index}", "exec"), namespace)
        except Exception as error:  # pragma: no cover - the message names the block
            raise AssertionError(f"README block {index} failed: {error!r}\n{block}") from error
