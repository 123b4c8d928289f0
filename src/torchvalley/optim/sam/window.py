r"""Window SAM: sharpness-aware steps only inside a window of training, plain steps outside.

Step ``t`` (counted from 0) is a full SAM step (any ascent geometry, any base optimizer) when it
lies in the window, and a plain base-optimizer step (one pass) otherwise::

    n = round(fraction * total_steps)
    window = "early":  SAM for t < n                  (the first `fraction` of training)
    window = "late":   SAM for t >= total_steps - n   (the last `fraction`, and any step after)

A step costs :math:`1 + f` passes on average over ``total_steps`` (``f = n / total_steps``).
Over the run's ``total_steps`` steps, ``fraction = 1`` is SAM and ``fraction = 0`` the base
optimizer, bit for bit. Without ``total_steps`` (``None``) only these two are accepted, and
apply to every step; a partial window needs ``total_steps``.

Why a window: Zhou, Wang, Mao, Li, Yan, *Sharpness-Aware Minimization Efficiently Selects
Flatter Minima Late in Training*, ICLR 2025, switch SGD to SAM for the last few epochs and keep
most of SAM's generalization; Baek, Kolter, Raghunathan, *Why is SAM Robust to Label Noise?*,
ICLR 2024, locate SAM's label-noise robustness early in training (it up-weights the clean
examples' gradients before the noisy ones are fitted). ``window`` picks either end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from torchvalley.optim.sam.engine import SAM
from torchvalley.registry import Hyperparameter, validate_group

__all__ = ["WindowSAM"]

_WINDOW_HYPERPARAMETERS = (
    Hyperparameter("fraction", "unit_interval", 1.0, "share of total_steps that are SAM steps"),
    Hyperparameter("window", "choice", "late", "which end of training", choices=("early", "late")),
    Hyperparameter(
        "total_steps", "optional_positive_int", None, "steps of the run (0 < fraction < 1)"
    ),
)


class WindowSAM(SAM):
    """SAM steps in the first or last ``fraction`` of ``total_steps``; base steps elsewhere.

    Args:
        params, base_optimizer, rho, ascent, perturb, **kwargs: as :class:`SAM`.
        fraction: share of the run's steps that are SAM steps (``1``: SAM, ``0``: the base
            optimizer; the default 1 is SAM itself).
        window: ``"early"`` (the first steps; steps beyond ``total_steps`` are base steps) or
            ``"late"`` (the last steps; steps beyond ``total_steps`` stay SAM steps).
        total_steps: the number of ``step`` calls the run will make; required when
            ``0 < fraction < 1`` (``None``: fraction 1 is SAM on every step, 0 never).

    Raises:
        ValueError: a bad setting, or ``total_steps`` missing for a partial window.

    The step counter is part of ``state_dict`` (bit-identical resume).
    """

    HYPERPARAMETERS: ClassVar[tuple[Hyperparameter, ...]] = (
        *SAM.HYPERPARAMETERS,
        *_WINDOW_HYPERPARAMETERS,
    )

    def __init__(
        self,
        params: Any,
        base_optimizer: Any = "sgd",
        rho: float = 0.05,
        ascent: str = "sam",
        perturb: Any = "all",
        *,
        fraction: float = 1.0,
        window: str = "late",
        total_steps: int | None = None,
        **kwargs: Any,
    ) -> None:
        settings = validate_group(
            _WINDOW_HYPERPARAMETERS,
            {"fraction": fraction, "window": window, "total_steps": total_steps},
        )
        fraction, total_steps = settings["fraction"], settings["total_steps"]
        if total_steps is None and 0 < fraction < 1:
            raise ValueError(
                f"Invalid total_steps: None; a window of fraction={fraction} needs the run's "
                "number of steps (total_steps=...)"
            )
        super().__init__(params, base_optimizer, rho, ascent, perturb, **kwargs)
        self.fraction, self.window, self.total_steps = fraction, settings["window"], total_steps
        # SAM steps: [first, stop) (stop None: no end); without a total, fraction 0 or 1.
        if total_steps is None:
            self._first, self._stop = 0, (None if fraction == 1 else 0)
        else:
            n = int(fraction * total_steps + 0.5)  # round half up
            self._first, self._stop = (0, n) if self.window == "early" else (total_steps - n, None)
        self.window_steps = 0  # steps taken

    def in_window(self, step: int | None = None) -> bool:
        """Whether step ``step`` (default: the next one) is a SAM step."""
        t = self.window_steps if step is None else step
        return t >= self._first and (self._stop is None or t < self._stop)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, grad_scaler: Any = None) -> Any:
        """A SAM step inside the window (two passes), a base step outside it (one pass)."""
        if closure is None:
            raise RuntimeError(
                "WindowSAM.step() needs a closure (zero_grad, forward, backward, return loss)"
            )
        if self.in_window():
            loss = super().step(closure, grad_scaler=grad_scaler)
        else:
            with torch.enable_grad():
                loss = closure()
            self._base_step(grad_scaler)
        self.window_steps += 1
        return loss

    # -- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """SAM's ``state_dict`` plus the step counter."""
        state = super().state_dict()
        state["window_sam"] = {"steps": self.window_steps}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`; one without the step counter is refused (ValueError)."""
        state_dict = dict(state_dict)
        record = state_dict.pop("window_sam", None)
        if not isinstance(record, dict) or "steps" not in record:
            raise ValueError("Invalid state_dict: not saved by WindowSAM (no 'window_sam' record)")
        super().load_state_dict(state_dict)
        self.window_steps = int(record["steps"])

    def __repr__(self) -> str:
        return (
            f"WindowSAM(fraction={self.fraction}, window={self.window!r}, "
            f"total_steps={self.total_steps}, base={self.base_optimizer!r})"
        )
