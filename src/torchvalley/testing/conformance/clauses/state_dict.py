"""Clause 2: a checkpoint resumes bit for bit."""

from __future__ import annotations

import copy
import dataclasses
import io

import torch

from torchvalley.registry import OptimizerEntry
from torchvalley.testing.conformance.compare import (
    assert_identical,
    differences,
    first_line,
)
from torchvalley.testing.conformance.harness import (
    OTHER_SEED,
    drive,
    fail,
    new_optimizer,
    restores_global_rng,
    run_steps,
)
from torchvalley.testing.conformance.problems import ProblemFactory, problem_for


@restores_global_rng
def check_state_dict_round_trip(
    entry: OptimizerEntry,
    *,
    dtype: torch.dtype = torch.float32,
    make_problem: ProblemFactory | None = None,
    steps_before: int = 3,
    steps_after: int = 3,
) -> None:
    """Checkpoint, resume, continue: the resumed run is bit-identical to an uninterrupted one.

    Runs ``steps_before`` steps, saves ``optimizer.state_dict()`` with :func:`torch.save` into a
    buffer and continues the original for ``steps_after`` steps. Then loads the buffer with
    ``torch.load(weights_only=True)`` (torch's default since 2.6: the state dict must hold only
    tensors and plain Python values), builds a fresh model copy and optimizer, loads the dict
    with ``load_state_dict``, **reseeds the global torch RNG with a different seed** (so an
    optimizer drawing noise from the global RNG instead of a generator whose state it saves
    fails) and continues ``steps_after`` steps. Asserts:

    * loading does not mutate the dict given to ``load_state_dict``, and ``state_dict()``
      right after loading equals it (tensors bit for bit);
    * the resumed parameters and ``state_dict()`` equal the uninterrupted run's bit for bit;
    * continuing does not change the loaded dict's structure, param groups or non-tensor
      values. Its tensors may change: ``torch.optim.Optimizer.load_state_dict`` adopts the
      given tensors without copying when dtype and device already match (pytorch/pytorch
      #147288), so every torch-based optimizer updates them in place.
    """
    make_problem = make_problem or problem_for(entry)
    problem, optimizer = run_steps(entry, make_problem, dtype, steps=steps_before)
    buffer = io.BytesIO()
    try:
        torch.save(optimizer.state_dict(), buffer)
    except Exception as error:
        fail(entry, f"state_dict: torch.save(optimizer.state_dict()) failed: {error!r}")
    resumed_problem = dataclasses.replace(problem, model=copy.deepcopy(problem.model))

    # The uninterrupted run goes on with the global RNG where it is.
    drive(optimizer, problem, steps_after)

    buffer.seek(0)
    try:
        loaded = torch.load(buffer, weights_only=True)
    except Exception as error:
        fail(
            entry,
            "state_dict: torch.load(weights_only=True) cannot read the saved state_dict; keep it "
            "to tensors and plain Python values (e.g. a generator as generator.get_state(), a "
            "base optimizer as its registry name)",
            f"{type(error).__name__}: {first_line(error)}",
        )
    pristine = copy.deepcopy(loaded)
    resumed = new_optimizer(
        entry, resumed_problem.parameters(), resumed_problem.model, **entry.example
    )
    resumed.load_state_dict(loaded)
    diffs = differences(loaded, pristine, "state_dict")
    if diffs:
        fail(entry, "state_dict: load_state_dict mutated the dict it was given", diffs)
    diffs = differences(resumed.state_dict(), loaded, "state_dict")
    if diffs:
        fail(
            entry,
            "state_dict: state_dict() right after load_state_dict differs from the loaded dict",
            diffs,
        )

    torch.manual_seed(OTHER_SEED)
    drive(resumed, resumed_problem, steps_after)
    assert_identical(
        entry,
        "state_dict: resumed parameters differ from an uninterrupted run (state missing from "
        "state_dict, or noise drawn from the global RNG instead of a saved generator?)",
        resumed_problem.snapshot(),
        problem.snapshot(),
    )
    diffs = differences(resumed.state_dict(), optimizer.state_dict(), "state_dict")
    if diffs:
        fail(entry, "state_dict: resumed optimizer state differs from an uninterrupted run", diffs)
    diffs = differences(loaded, pristine, "state_dict", tensors=False)
    if diffs:
        fail(
            entry,
            "state_dict: continuing after load_state_dict changed the loaded dict's "
            "structure, param groups or non-tensor values",
            diffs,
        )
