"""docs/posterior.md: its Python blocks run as printed, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import torch

PAGE = Path(__file__).resolve().parents[1] / "docs" / "posterior.md"


def test_posterior_page_runs() -> None:
    blocks = re.findall(r"^```python\n(.*?)^```$", PAGE.read_text(), flags=re.S | re.M)
    assert len(blocks) >= 4
    namespace: dict[str, object] = {"__name__": "posterior_page"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the page's nn.Linear initialisation
            for index, block in enumerate(blocks):
                exec(compile(block, f"{PAGE}:block{index}", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    # the page's claims about the collector, checked against its own run
    collector = namespace["collector"]
    assert collector.steps == [s for s in range(300) if s >= 100 and (s - 100) % 10 == 0]
    assert all(
        not torch.equal(a["weight"], b["weight"])
        for a, b in zip(collector.samples[:-1], collector.samples[1:], strict=True)
    )
