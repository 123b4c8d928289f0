"""Posterior sample collection, Bayesian model averaging and uncertainty-quantification metrics.

Typical use with any Langevin / SG-MCMC sampler that updates an ``nn.Module`` in place::

    collector = SampleCollector(model, burn_in=1000, thin=10, max_samples=100)
    for step in range(n_steps):
        sampler.step(closure)
        collector(step)  # stores a copy when step >= burn_in and (step - burn_in) % thin == 0
    probs = bayesian_model_average(model, collector.samples, x_test, kind="classification")
    metrics = uq_metrics(probs, y_test)  # {"nll", "accuracy", "ece", "brier"}

Conventions:

* A *sample* is a ``dict[str, Tensor]`` shaped like ``model.state_dict()`` (parameters **and**
  buffers, e.g. BatchNorm running statistics), detached and cloned, so later sampler steps never
  change it.
* Bayesian model averaging averages predictive **probabilities** (not logits) with equal weight
  per sample: ``p(y | x) ≈ (1/S) Σ_s p(y | x, θ_s)``.
* The metrics are pure functions of predictive probabilities and integer targets. Multi-class
  probabilities have shape ``(n, C)``; binary probabilities have shape ``(n,)`` and are the
  probability of class 1.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = [
    "SampleCollector",
    "accuracy",
    "bayesian_model_average",
    "brier_score",
    "expected_calibration_error",
    "negative_log_likelihood",
    "uq_metrics",
]

_NLL_EPS = 1e-12


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


class SampleCollector:
    """Collects posterior samples (model states) from a running sampler, with burn-in and thinning.

    Call :meth:`collect` (or the collector itself) once after every sampler step with the index
    of that step (``0, 1, 2, ...``). The model state is stored when
    ``step >= burn_in`` and ``(step - burn_in) % thin == 0``, i.e. at steps
    ``burn_in, burn_in + thin, burn_in + 2 * thin, ...``.

    ``max_samples`` policy: **keep the most recent** ``max_samples`` samples (a sliding window,
    first-in first-out). Later samples are the furthest from initialisation, so dropping the
    oldest ones also acts as an extended burn-in. The window keeps memory bounded at
    ``max_samples`` model copies.

    Each stored sample is ``{name: tensor}`` for every entry of ``model.state_dict()`` (parameters
    and buffers), detached and copied to ``device``.

    Args:
        model: The module whose state the sampler updates in place.
        burn_in: Number of initial steps to discard (``>= 0``).
        thin: Keep every ``thin``-th step after burn-in (``>= 1``).
        max_samples: Maximum number of samples kept (``>= 1``), or ``None`` for no limit.
        device: Device on which the copies are stored (default CPU, to spare accelerator memory).

    Raises:
        ValueError: If ``burn_in``, ``thin`` or ``max_samples`` are out of range.

    Attributes:
        samples: The stored samples, oldest first.
        steps: The step index of each stored sample, aligned with ``samples``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        burn_in: int,
        thin: int,
        max_samples: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.burn_in = _check_int("burn_in", burn_in, 0)
        self.thin = _check_int("thin", thin, 1)
        if max_samples is not None:
            max_samples = _check_int("max_samples", max_samples, 1)
        self.max_samples = max_samples
        self.device = torch.device(device)
        self.samples: list[dict[str, Tensor]] = []
        self.steps: list[int] = []
        self.last_step: int | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def should_collect(self, step: int) -> bool:
        """Whether ``step`` is a collection step (burn-in and thinning rule only)."""
        step = _check_int("step", step, 0)
        return step >= self.burn_in and (step - self.burn_in) % self.thin == 0

    def collect(self, step: int) -> bool:
        """Records the model state if ``step`` is a collection step.

        Args:
            step: Index of the sampler step just taken; must be strictly increasing across calls.

        Returns:
            ``True`` if a sample was stored.

        Raises:
            ValueError: If ``step`` is negative, not an int, or not larger than the previous step.
        """
        step = _check_int("step", step, 0)
        if self.last_step is not None and step <= self.last_step:
            raise ValueError(f"step must be strictly increasing: got {step} after {self.last_step}")
        self.last_step = step
        if not self.should_collect(step):
            return False
        sample = {
            name: t.detach().to(self.device, copy=True)
            for name, t in self.model.state_dict().items()
        }
        self.samples.append(sample)
        self.steps.append(step)
        if self.max_samples is not None and len(self.samples) > self.max_samples:
            del self.samples[0]
            del self.steps[0]
        return True

    __call__ = collect

    def state_dict(self) -> dict[str, Any]:
        """Returns the collector's configuration and stored samples (for checkpointing)."""
        return {
            "burn_in": self.burn_in,
            "thin": self.thin,
            "max_samples": self.max_samples,
            "samples": [dict(s) for s in self.samples],
            "steps": list(self.steps),
            "last_step": self.last_step,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores samples and step counters saved by :meth:`state_dict`.

        The configuration (``burn_in``, ``thin``, ``max_samples``) must match this collector's.
        Sample tensors are copied to ``self.device``.

        Args:
            state_dict: A mapping produced by :meth:`state_dict`.

        Raises:
            ValueError: On missing keys, a configuration mismatch or inconsistent lengths.
        """
        required = ("burn_in", "thin", "max_samples", "samples", "steps", "last_step")
        missing = [k for k in required if k not in state_dict]
        if missing:
            raise ValueError(f"state_dict is missing keys {missing}")
        for key in ("burn_in", "thin", "max_samples"):
            if state_dict[key] != getattr(self, key):
                raise ValueError(
                    f"state_dict has {key}={state_dict[key]!r}, collector has "
                    f"{getattr(self, key)!r}"
                )
        samples, steps = list(state_dict["samples"]), [int(s) for s in state_dict["steps"]]
        if len(samples) != len(steps):
            raise ValueError(f"{len(samples)} samples but {len(steps)} steps in state_dict")
        if self.max_samples is not None and len(samples) > self.max_samples:
            raise ValueError(f"{len(samples)} samples exceed max_samples={self.max_samples}")
        self.samples = [
            {k: v.detach().to(self.device, copy=True) for k, v in s.items()} for s in samples
        ]
        self.steps = steps
        last = state_dict["last_step"]
        self.last_step = None if last is None else int(last)


def _model_device(model: nn.Module) -> torch.device | None:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return None


def bayesian_model_average(
    model: nn.Module,
    samples: Sequence[Mapping[str, Tensor]] | SampleCollector,
    inputs: Tensor,
    *,
    kind: Literal["classification", "binary", "regression"] = "classification",
    batch_size: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Bayesian model average of predictions over posterior samples.

    Each sample is loaded (``load_state_dict(strict=True)``) into a deep copy of ``model`` put in
    eval mode, so the caller's model (parameters, buffers, train/eval mode) is left unchanged.
    Predictions run under ``torch.no_grad`` in mini-batches of ``batch_size`` along dim 0.

    * ``"classification"``: the model returns logits ``(n, C)``; returns
      ``(1/S) Σ_s softmax(logits_s)`` of shape ``(n, C)``.
    * ``"binary"``: the model returns logits of shape ``(n,)`` or ``(n, 1)``; returns
      ``(1/S) Σ_s sigmoid(logit_s)`` of shape ``(n,)`` (probability of class 1).
    * ``"regression"``: returns ``(mean, variance)`` of the model outputs across samples, both
      shaped like one output. ``variance`` is the between-sample (epistemic) variance with
      divisor ``S`` (``ddof=0``), computed with Welford's algorithm; add any observation-noise
      variance yourself.

    Args:
        model: Module with the architecture of the samples (used as a template only).
        samples: State dicts as stored by :class:`SampleCollector`, or the collector itself.
        inputs: Input tensor; batched along dim 0 and moved to the model's device.
        kind: ``"classification"``, ``"binary"`` or ``"regression"``.
        batch_size: Mini-batch size for the forward passes; ``None`` means all inputs at once.

    Returns:
        The averaged probabilities, or ``(mean, variance)`` for regression.

    Raises:
        ValueError: On an empty sample list, an unknown ``kind``, a bad ``batch_size`` or binary
            outputs of the wrong shape.
    """
    if isinstance(samples, SampleCollector):
        samples = samples.samples
    samples = list(samples)
    if not samples:
        raise ValueError("samples is empty")
    if kind not in ("classification", "binary", "regression"):
        raise ValueError(f"kind must be 'classification', 'binary' or 'regression', got {kind!r}")
    if not isinstance(inputs, Tensor):
        raise ValueError(f"inputs must be a Tensor, got {type(inputs).__name__}")
    n = inputs.shape[0] if inputs.ndim > 0 else 0
    if inputs.ndim == 0 or n == 0:
        raise ValueError("inputs must have a non-empty batch dimension")
    if batch_size is None:
        batch_size = n
    batch_size = _check_int("batch_size", batch_size, 1)

    work = copy.deepcopy(model)
    work.eval()
    device = _model_device(work)
    if device is not None:
        inputs = inputs.to(device)

    def predict() -> Tensor:
        outs = [work(inputs[i : i + batch_size]) for i in range(0, n, batch_size)]
        out = torch.cat(outs, dim=0)
        if kind == "classification":
            return torch.softmax(out, dim=-1)
        if kind == "binary":
            if out.ndim == 2 and out.shape[1] == 1:
                out = out.squeeze(1)
            if out.ndim != 1:
                raise ValueError(
                    f"binary model outputs must have shape (n,) or (n, 1), got {tuple(out.shape)}"
                )
            return torch.sigmoid(out)
        return out

    mean: Tensor | None = None
    m2: Tensor | None = None
    with torch.no_grad():
        for count, sample in enumerate(samples, start=1):
            work.load_state_dict(sample, strict=True)
            pred = predict()
            if mean is None:
                mean = pred.clone()
                m2 = torch.zeros_like(pred)
                continue
            delta = pred - mean
            mean += delta / count
            if kind == "regression":
                m2 += delta * (pred - mean)
    assert mean is not None and m2 is not None
    if kind == "regression":
        return mean, m2 / len(samples)
    return mean


# --------------------------------------------------------------------------------------------
# Metrics


def _prepare(probs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, bool]:
    """Validates inputs; returns float64 probs, int64 targets and whether the case is binary."""
    probs = torch.as_tensor(probs).detach()
    targets = torch.as_tensor(targets).detach()
    if not probs.is_floating_point():
        raise ValueError("probs must be floating point")
    probs = probs.to(torch.float64)
    if probs.ndim == 1:
        binary = True
    elif probs.ndim == 2 and probs.shape[1] >= 2:
        binary = False
    else:
        raise ValueError(
            "probs must have shape (n,) (binary, probability of class 1) or (n, C) with C >= 2, "
            f"got {tuple(probs.shape)}"
        )
    n = probs.shape[0]
    if n == 0:
        raise ValueError("probs is empty")
    if targets.shape != (n,):
        raise ValueError(f"targets must have shape ({n},), got {tuple(targets.shape)}")
    if not torch.isfinite(probs).all() or (probs < 0).any() or (probs > 1).any():
        raise ValueError("probs must be finite and lie in [0, 1]")
    if not binary and not torch.allclose(
        probs.sum(dim=1), torch.ones(n, dtype=torch.float64), atol=1e-3, rtol=0.0
    ):
        raise ValueError("each row of probs must sum to 1 (within 1e-3)")
    if targets.is_floating_point() and not torch.equal(targets, targets.round()):
        raise ValueError("targets must be integer class labels")
    targets = targets.to(torch.int64)
    n_classes = 2 if binary else probs.shape[1]
    if (targets < 0).any() or (targets >= n_classes).any():
        raise ValueError(f"targets must lie in [0, {n_classes})")
    return probs, targets, binary


def _true_class_prob(probs: Tensor, targets: Tensor, binary: bool) -> Tensor:
    if binary:
        return torch.where(targets == 1, probs, 1.0 - probs)
    return probs.gather(1, targets[:, None]).squeeze(1)


def _confidence_and_correct(probs: Tensor, targets: Tensor, binary: bool) -> tuple[Tensor, Tensor]:
    if binary:
        pred = (probs > 0.5).to(torch.int64)
        conf = torch.where(pred == 1, probs, 1.0 - probs)
    else:
        conf, pred = probs.max(dim=1)
    return conf, (pred == targets).to(torch.float64)


def negative_log_likelihood(probs: Tensor, targets: Tensor) -> float:
    """Mean negative log predictive probability of the true class.

    The probability of the true class is clamped to ``[1e-12, 1]`` before the log, so a wrong
    prediction with probability 0 costs ``-log(1e-12) ≈ 27.6`` instead of ``inf``.

    Args:
        probs: ``(n, C)`` class probabilities, or ``(n,)`` probabilities of class 1 (binary).
        targets: ``(n,)`` integer labels.

    Returns:
        ``-(1/n) Σ_i log p_i[y_i]``.
    """
    probs, targets, binary = _prepare(probs, targets)
    p = _true_class_prob(probs, targets, binary).clamp(min=_NLL_EPS, max=1.0)
    return float(-p.log().mean())


def accuracy(probs: Tensor, targets: Tensor) -> float:
    """Fraction of examples whose most probable class equals the target.

    Multi-class ties go to the lowest class index (``argmax``); binary predicts class 1 iff
    ``p > 0.5`` (consistent with ``argmax`` of ``[1 - p, p]``).

    Args:
        probs: ``(n, C)`` class probabilities, or ``(n,)`` probabilities of class 1 (binary).
        targets: ``(n,)`` integer labels.

    Returns:
        The accuracy in ``[0, 1]``.
    """
    probs, targets, binary = _prepare(probs, targets)
    _, correct = _confidence_and_correct(probs, targets, binary)
    return float(correct.mean())


def expected_calibration_error(probs: Tensor, targets: Tensor, n_bins: int = 15) -> float:
    """Expected calibration error of the top-label confidence (Guo et al., 2017).

    The confidence of an example is the probability of its predicted class (binary: ``max(p,
    1 - p)``). Confidences are grouped into ``n_bins`` equal-width bins ``(k/B, (k+1)/B]`` (a
    confidence of exactly 0 goes to the first bin), and
    ``ECE = Σ_b (n_b / n) |acc_b − conf_b|`` over non-empty bins, where ``acc_b`` and ``conf_b``
    are the bin's accuracy and mean confidence. Values that fall exactly on a bin edge are
    subject to floating-point rounding of the edges.

    Args:
        probs: ``(n, C)`` class probabilities, or ``(n,)`` probabilities of class 1 (binary).
        targets: ``(n,)`` integer labels.
        n_bins: Number of bins (``>= 1``).

    Returns:
        The ECE in ``[0, 1]``.
    """
    n_bins = _check_int("n_bins", n_bins, 1)
    probs, targets, binary = _prepare(probs, targets)
    conf, correct = _confidence_and_correct(probs, targets, binary)
    inner_edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)[1:-1]
    bins = torch.bucketize(conf, inner_edges, right=False)
    sum_conf = torch.bincount(bins, weights=conf, minlength=n_bins)
    sum_acc = torch.bincount(bins, weights=correct, minlength=n_bins)
    # Σ_b (n_b/n)|acc_b − conf_b| = (1/n) Σ_b |Σ_{i∈b} (correct_i − conf_i)|
    return float((sum_acc - sum_conf).abs().sum() / conf.shape[0])


def brier_score(probs: Tensor, targets: Tensor) -> float:
    """Brier score (mean squared error of the probabilities against the one-hot target).

    Multi-class ``(n, C)``: ``(1/n) Σ_i Σ_k (p_ik − 1[y_i = k])²`` (range ``[0, 2]``).
    Binary ``(n,)``: ``(1/n) Σ_i (p_i − y_i)²`` (range ``[0, 1]``, as
    ``sklearn.metrics.brier_score_loss``); this is half the multi-class score of ``[1 - p, p]``.

    Args:
        probs: ``(n, C)`` class probabilities, or ``(n,)`` probabilities of class 1 (binary).
        targets: ``(n,)`` integer labels.

    Returns:
        The Brier score.
    """
    probs, targets, binary = _prepare(probs, targets)
    if binary:
        return float(((probs - targets.to(torch.float64)) ** 2).mean())
    onehot = torch.nn.functional.one_hot(targets, probs.shape[1]).to(torch.float64)
    return float(((probs - onehot) ** 2).sum(dim=1).mean())


def uq_metrics(probs: Tensor, targets: Tensor, *, n_bins: int = 15) -> dict[str, float]:
    """All uncertainty-quantification metrics at once.

    Args:
        probs: ``(n, C)`` class probabilities, or ``(n,)`` probabilities of class 1 (binary).
        targets: ``(n,)`` integer labels.
        n_bins: Number of ECE bins.

    Returns:
        ``{"nll": ..., "accuracy": ..., "ece": ..., "brier": ...}``.
    """
    return {
        "nll": negative_log_likelihood(probs, targets),
        "accuracy": accuracy(probs, targets),
        "ece": expected_calibration_error(probs, targets, n_bins=n_bins),
        "brier": brier_score(probs, targets),
    }
