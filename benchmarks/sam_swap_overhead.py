"""SAM's optimizer-side overhead with ``swap_storage=True`` next to the default, in one run of the
step benchmark (``benchmarks/step_overhead.py``): rows sgd, sam, sam (swap_storage), sam_on.

Usage: python benchmarks/sam_swap_overhead.py [step_overhead.py options, e.g. --threads 1]
"""

import dataclasses
import importlib.util
import sys
from pathlib import Path

import torchvalley

spec = importlib.util.spec_from_file_location(
    "step_overhead", Path(__file__).with_name("step_overhead.py")
)
step_overhead = importlib.util.module_from_spec(spec)
sys.modules["step_overhead"] = step_overhead  # dataclasses in it look their module up
spec.loader.exec_module(step_overhead)

sam = torchvalley.get_optimizer_entry("sam")
# Not registered (the registry is left as it is): the benchmark builds it from its factory.
sam_swap = dataclasses.replace(
    sam, name="sam (swap_storage)", example={**sam.example, "swap_storage": True}
)
entries = [torchvalley.get_optimizer_entry("sgd"), sam, sam_swap]
raise SystemExit(step_overhead.main([*sys.argv[1:], "--no-anchors"], entries=entries))
