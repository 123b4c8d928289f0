"""Clause 6: ``foreach=True`` and ``foreach=False`` agree."""

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
    skip,
)
from torchvalley.testing.conformance.problems import ProblemFactory, problem_for

# foreach=True vs foreach=False. On CPU torch's multi-tensor kernels run the same elementwise
# arithmetic as the per-tensor path, so for sgd/adam/adamw the two agree bit for bit; a few
# ulps are allowed in case an implementation fuses or reorders operations
# (float32: ~8 ulp around 1; float64: ~5e3 ulp around 1, still 1e-12 absolute).
_FOREACH_TOLERANCES = {torch.float32: (1e-6, 1e-7), torch.float64: (1e-12, 1e-12)}


@restores_global_rng
def check_foreach(
    entry: OptimizerEntry,
    *,
    dtype: torch.dtype = torch.float32,
    make_problem: ProblemFactory | None = None,
) -> None:
    """``foreach=True`` and ``foreach=False`` give the same parameters and state.

    Tolerances: ``rtol=1e-6, atol=1e-7`` for float32 and ``rtol=atol=1e-12`` for float64.

    Raises:
        unittest.SkipTest: if the entry does not declare ``foreach``.
    """
    if not entry.capabilities.foreach:
        skip(entry, "does not declare a foreach path")
    if entry.hyperparameter("foreach") is None:
        fail(
            entry,
            "foreach: capabilities.foreach is set but 'foreach' is not a documented hyperparameter",
        )
    make_problem = make_problem or problem_for(entry)
    rtol, atol = _FOREACH_TOLERANCES.get(dtype, (1e-6, 1e-7))
    runs = [run_steps(entry, make_problem, dtype, foreach=flag) for flag in (True, False)]
    (multi_problem, multi), (single_problem, single) = runs
    pairs = [
        (f"param[{i}]", a, b)
        for i, (a, b) in enumerate(
            zip(multi_problem.snapshot(), single_problem.snapshot(), strict=True)
        )
    ]
    # The whole state dict (a wrapper may keep its base's state outside "state").
    multi_state = dict(iter_state_tensors(multi.state_dict(), "state_dict"))
    single_state = dict(iter_state_tensors(single.state_dict(), "state_dict"))
    if set(multi_state) != set(single_state):
        fail(
            entry,
            "foreach: the two paths keep different state",
            [f"foreach=True: {sorted(multi_state)}", f"foreach=False: {sorted(single_state)}"],
        )
    pairs += [(path, multi_state[path], single_state[path]) for path in sorted(multi_state)]
    for path, a, b in pairs:
        try:
            if a.is_floating_point():
                torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
            elif not torch.equal(a, b):
                raise AssertionError("values differ")
        except AssertionError as error:
            fail(
                entry,
                f"foreach: foreach=True and foreach=False differ at {path}",
                str(error).splitlines(),
            )
