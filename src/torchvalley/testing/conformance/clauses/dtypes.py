"""Clause 5: dtypes are kept and float32 follows float64."""

from __future__ import annotations

import torch

from torchvalley.registry import OptimizerEntry
from torchvalley.testing.conformance.compare import (
    iter_state_tensors,
)
from torchvalley.testing.conformance.harness import (
    fail,
    restores_global_rng,
    run_steps,
)
from torchvalley.testing.conformance.problems import ProblemFactory, problem_for

# float32 vs float64 after STEPS steps on the default problem (parameters of order 0.1-1):
# rounding differences are ~1e-7 relative; 1e-4 leaves room for their growth through a few
# steps while still catching dtype-dependent bugs. atol covers entries that pass through zero.
_DTYPE_RTOL, _DTYPE_ATOL = 1e-4, 1e-5


@restores_global_rng
def check_dtypes(entry: OptimizerEntry, *, make_problem: ProblemFactory | None = None) -> None:
    """float32 and float64 problems: dtypes are kept and the trajectories agree.

    Asserts that parameters and every floating optimizer-state tensor with at least one
    dimension keep the parameter's dtype (0-dim counters are exempt: torch keeps Adam's
    ``step`` in float32 for any parameter dtype), and that the float32 trajectory stays
    within ``rtol=1e-4, atol=1e-5`` of the float64 one after a few steps.
    """
    make_problem = make_problem or problem_for(entry)
    results = {}
    for dtype in (torch.float32, torch.float64):
        problem, optimizer = run_steps(entry, make_problem, dtype)
        wrong = [
            f"param[{i}] is {p.dtype}"
            for i, p in enumerate(problem.parameters())
            if p.dtype != dtype
        ]
        # The whole state dict, not just optimizer.state: a wrapper may keep its base's state
        # elsewhere. Every parameter of the problem has the same dtype.
        for path, tensor in iter_state_tensors(optimizer.state_dict(), "state_dict"):
            if tensor.is_floating_point() and tensor.dim() > 0 and tensor.dtype != dtype:
                wrong.append(f"{path} is {tensor.dtype}, parameters are {dtype}")
        if wrong:
            fail(entry, f"dtypes: with {dtype} parameters, a tensor changed dtype", wrong)
        results[dtype] = problem.snapshot()
    for index, (single, double) in enumerate(
        zip(results[torch.float32], results[torch.float64], strict=True)
    ):
        try:
            torch.testing.assert_close(
                single.to(torch.float64), double, rtol=_DTYPE_RTOL, atol=_DTYPE_ATOL
            )
        except AssertionError as error:
            fail(
                entry,
                f"dtypes: float32 trajectory drifted from float64 at param[{index}]",
                str(error).splitlines(),
            )
