r"""Fluctuation–dissipation relations (FDR) for SGD with momentum, and the FDR quench schedule.

Sho Yaida, "Fluctuation-dissipation relations for stochastic gradient descent", ICLR 2019
(arXiv:1810.00004; reference code ``facebookresearch/FDR_scheduler``).

**Velocity convention (torch's).** :class:`torch.optim.SGD` with momentum :math:`\mu`, dampening
:math:`\delta`, weight decay :math:`\lambda`, learning rate :math:`\eta` (``nesterov=False``,
``maximize=False``) does, with :math:`G_t = \nabla f_{B_t}(\theta_t) + \lambda\theta_t` the
minibatch gradient plus the L2 term,

.. math::

    b_{t+1} = \mu\, b_t + (1-\delta)\, G_t, \qquad \theta_{t+1} = \theta_t - \eta\, b_{t+1}

(torch's first step sets :math:`b_1 = G_0` undamped; with :math:`\mu = 0` there is no buffer
and the step is :math:`\theta_{t+1} = \theta_t - \eta G_t` whatever :math:`\delta`). Yaida's
code writes :math:`F = -G`, :math:`v \leftarrow \mu v + (1-\delta) F`,
:math:`\theta \leftarrow \theta + \eta v`: the same update with :math:`v = -b`, so
:math:`\|v\|^2 = \|b\|^2` and his relation carries over with torch's buffer unchanged.
The objective is :math:`F(\theta) = f(\theta) + \tfrac\lambda2\|\theta\|^2` with
:math:`\mathbb{E}[G_t \mid \theta_t] = \nabla F(\theta_t)`.

**FDR1** (observable :math:`\|\theta\|^2`; exact for any loss, at stationarity):

.. math::

    \langle \theta \cdot \nabla F(\theta) \rangle
        = \frac{\eta}{2}\,\frac{1+\mu}{1-\delta}\,\langle \|b\|^2 \rangle
    \qquad (\mu = 0:\ \tfrac\eta2 \langle\|G\|^2\rangle).

For the EMA form (:math:`\delta = \mu`) the factor is :math:`(1+\mu)/(1-\mu)`.

*Derivation.* Expanding :math:`\|\theta_{t+1}\|^2` and :math:`\theta_{t+1}\cdot b_{t+1}` with the
update and eliminating :math:`\theta_t \cdot b_t` gives the **exact one-step identity** (pure
algebra, no expectation, any gradients):

.. math::

    \theta_t\cdot G_t - c\,\|b_{t+1}\|^2 = \frac{1}{1-\delta}\Big[\mu\,\Delta_t(\theta\cdot b)
        - \frac{1-\mu}{2\eta}\,\Delta_t(\|\theta\|^2)\Big],
    \qquad c = \frac\eta2\,\frac{1+\mu}{1-\delta},

with :math:`(\theta\cdot b)_t = \theta_t\cdot b_t` and :math:`\Delta_t X = X_{t+1} - X_t`. At
stationarity (Yaida's master equation :math:`\langle O_{t+1}\rangle = \langle O_t\rangle`) the
right side averages to 0 and :math:`\langle\theta_t\cdot G_t\rangle = \langle\theta\cdot\nabla
F\rangle`; over a window of T steps it telescopes to boundary terms of order 1/T, which is why
the time-averaged ratio measures the distance from equilibrium. The relation holds per
coordinate, hence per parameter group (each with its own :math:`\eta, \mu, \delta, \lambda`) and
for any sum of groups.

**FDR2** (observable :math:`F`; harmonic order, exact for a quadratic :math:`F`). Expanding
:math:`F(\theta_{t+1})` and :math:`\nabla F(\theta_{t+1})\cdot b_{t+1}` to second order and using
stationarity of both (the second closes the momentum term):

.. math::

    \langle \|\nabla F\|^2 \rangle = \frac{\eta}{2}\,\frac{1+\mu}{1-\delta}\,
        \langle b^\top H\, b \rangle + O(\eta^2 \nabla^3 F),

which for :math:`\mu = 0` is Yaida's :math:`\langle\|\nabla f\|^2\rangle = \tfrac\eta2\langle
g_B^\top H g_B\rangle` (research brief §6.1). With groups of different
:math:`(\eta_g,\mu_g,\delta_g)` it reads :math:`\sum_g w_g\langle\|\nabla_g F\|^2\rangle =
\sum_g \tfrac{1+\mu_g}{2(1-\mu_g)}\eta_g\langle b_g\cdot (H\Lambda b)_g\rangle` with
:math:`w_g = \eta_g(1-\delta_g)/(1-\mu_g)`, :math:`\Lambda = \mathrm{diag}(\eta_g)`.
:meth:`FDRMonitor.observe_fdr2` measures both sides with one full-data gradient and one
Hessian-vector product (:meth:`~torchvalley.curvature.function.ParameterFunction.hvp`); the
deviation of the ratio from 1 measures the anharmonicity (Yaida §4).

**The Hessian's magnitude from fluctuations** (Yaida's second use of the relations). Dividing
FDR2 by FDR1 (same :math:`\eta, \mu, \delta` for every parameter) cancels the coefficient:

.. math::

    h_v \equiv \frac{\langle b^\top H\, b\rangle}{\langle \|b\|^2\rangle}
        = \frac{\langle \|\nabla F\|^2\rangle}{\langle \theta\cdot\nabla F\rangle}
        + O(\eta\,\nabla^3 F),

the curvature of :math:`F` along the SGD velocity (a weighted mean of the Hessian's
eigenvalues, with weights :math:`\langle (u_i\cdot b)^2\rangle`; for :math:`\mu = 0` near a
minimum, :math:`\approx \mathrm{tr}(HC)/\mathrm{tr}(C)` with C the minibatch-gradient
covariance), measured from two *gradient* observables, without a Hessian product; the
variant :math:`\langle\|\nabla F\|^2\rangle/(c\langle\|b\|^2\rangle)` uses FDR2 with the
measured velocity instead of FDR1. :meth:`FDRMonitor.curvature_estimate` returns both with the
direct :math:`\langle b^\top H b\rangle/\langle\|b\|^2\rangle` (one Hessian-vector
product per sample); their ratio is the FDR2 ratio, whose deviation from 1 is the
anharmonicity. All three are exact for a quadratic :math:`F` at stationarity.

**Measurement.** :class:`FDRMonitor` records, after every ``optimizer.step()`` (a step
post-hook), per parameter group, :math:`O_L = \theta_t\cdot G_t` and
:math:`O_R = c\,\|b_{t+1}\|^2`, reading ``p.grad`` and ``optimizer.state[p]["momentum_buffer"]``
and reconstructing the pre-step point exactly, :math:`\theta_t = \theta_{t+1} + \eta
b_{t+1}`. (Yaida records :math:`\|v_t\|^2` before the update instead of
:math:`\|b_{t+1}\|^2` after it: the same stationary average; this pairing makes the identity
above exact step by step.) :func:`batch_means_ratio` gives :math:`\bar O_L/\bar O_R` with a
batch-means confidence interval (delta method for a ratio of means: residuals
:math:`L_k - r R_k` of the K batch means, Student-t with K-1 degrees of freedom).

**Schedule.** :class:`FDRScheduler` implements Yaida's quench rule exactly (``mode="yaida"``,
the default) and a statistical variant (``mode="ci"``); see its docstring.
"""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist
from typing import Any, Literal

import torch
from torch.optim.lr_scheduler import LRScheduler

from torchvalley.curvature.function import ParameterFunction
from torchvalley.validation import check_choice, check_int_at_least

__all__ = [
    "FDRCurvature",
    "FDREstimate",
    "FDRMonitor",
    "FDRScheduler",
    "batch_means_ratio",
    "fdr1_coefficient",
]

_F64 = torch.float64


def fdr1_coefficient(lr: float, momentum: float = 0.0, dampening: float = 0.0) -> float:
    r"""FDR1 coefficient c in :math:`\langle\theta\cdot\nabla F\rangle = c\langle\|b\|^2\rangle`.

    :math:`c = \tfrac{\eta}{2}\,\tfrac{1+\mu}{1-\delta}` for torch's SGD buffer :math:`b`
    (``momentum > 0``); :math:`c = \eta/2` for ``momentum == 0`` (torch then ignores dampening
    and :math:`b` is the gradient :math:`G` itself).

    Raises:
        ValueError: for ``lr <= 0``, ``momentum`` outside ``[0, 1)`` or ``dampening``
            outside ``[0, 1)`` (with momentum).
    """
    lr, momentum, dampening = float(lr), float(momentum), float(dampening)
    if not lr > 0.0:
        raise ValueError(f"Invalid lr: {lr} (need lr > 0)")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"Invalid momentum: {momentum} (need 0 <= momentum < 1)")
    if momentum == 0.0:
        return 0.5 * lr
    if not 0.0 <= dampening < 1.0:
        raise ValueError(f"Invalid dampening: {dampening} (need 0 <= dampening < 1)")
    return 0.5 * lr * (1.0 + momentum) / (1.0 - dampening)


# --------------------------------------------------------------------------------------------
# Batch-means confidence interval of a ratio of means
# --------------------------------------------------------------------------------------------


def _t_quantile(p: float, df: int) -> float:
    """Student-t quantile, Cornish–Fisher expansion (rel. error < 3e-3 at df >= 4, p <= 0.995)."""
    z = NormalDist().inv_cdf(p)
    g1 = (z**3 + z) / 4.0
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96.0
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384.0
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160.0
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


@dataclasses.dataclass(frozen=True)
class FDREstimate:
    """A time-averaged FDR ratio with its batch-means confidence interval.

    Attributes:
        ratio: ``lhs / rhs`` (1 at equilibrium).
        lower, upper: the confidence interval of the ratio (``nan`` when there are too few
            records for ``n_batches`` batches of at least 2 records).
        lhs, rhs: the means of the two sides over the ``n`` records used.
        n: number of records averaged for ``lhs``, ``rhs`` and ``ratio``.
        n_batches: number of batch means used for the interval (0 without one).
        confidence: the interval's level.
    """

    ratio: float
    lower: float
    upper: float
    lhs: float
    rhs: float
    n: int
    n_batches: int
    confidence: float

    @property
    def halfwidth(self) -> float:
        """Half the interval's width (``nan`` without an interval)."""
        return 0.5 * (self.upper - self.lower)

    @property
    def contains_one(self) -> bool:
        """Whether the interval contains 1 (``False`` without an interval)."""
        return bool(self.lower <= 1.0 <= self.upper)


def batch_means_ratio(
    lhs: torch.Tensor,
    rhs: torch.Tensor,
    *,
    n_batches: int = 20,
    confidence: float = 0.95,
) -> FDREstimate:
    r""":math:`\bar L / \bar R` of two aligned series with a batch-means confidence interval.

    The ratio :math:`r = \bar L/\bar R` uses all n records (Yaida's plain time averages).
    For the interval, the last :math:`K m` records (:math:`K` = ``n_batches``,
    :math:`m = \lfloor n/K\rfloor`; the oldest remainder is left out) are cut into K
    contiguous batches with means :math:`L_k, R_k`; the delta-method standard error of the
    ratio is :math:`s_e/(\sqrt K\,\bar R_K)`, where :math:`s_e` is the sample standard
    deviation of :math:`L_k - r R_k` and :math:`\bar R_K` the mean of the :math:`R_k`; the
    interval is :math:`r \pm t_{K-1}\,\mathrm{se}`.
    Batch means absorb the autocorrelation of the series when m is much longer than its
    correlation time (Flegal & Jones 2010).

    Args:
        lhs, rhs: 1-D series of the same length (e.g. :math:`O_L, O_R`).
        n_batches: K ``>= 5``.
        confidence: level in ``(0, 1)``.

    Returns:
        An :class:`FDREstimate` (interval ``nan`` if ``n < 2 K``; ratio ``nan`` if empty).

    Raises:
        ValueError: for mismatched series, ``n_batches < 5`` or a bad ``confidence``.
    """
    lhs = torch.as_tensor(lhs).detach().to(device="cpu", dtype=_F64).reshape(-1)
    rhs = torch.as_tensor(rhs).detach().to(device="cpu", dtype=_F64).reshape(-1)
    if lhs.numel() != rhs.numel():
        raise ValueError(f"Invalid lhs/rhs: lengths {lhs.numel()} and {rhs.numel()} differ")
    if int(n_batches) < 5:
        raise ValueError(f"Invalid n_batches: {n_batches} (need n_batches >= 5)")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"Invalid confidence: {confidence} (need 0 < confidence < 1)")
    k, n = int(n_batches), lhs.numel()
    nan = math.nan
    if n == 0:
        return FDREstimate(nan, nan, nan, nan, nan, 0, 0, float(confidence))
    mean_l, mean_r = float(lhs.mean()), float(rhs.mean())
    if mean_r == 0.0:
        return FDREstimate(nan, nan, nan, mean_l, mean_r, n, 0, float(confidence))
    ratio = mean_l / mean_r
    m = n // k
    if m < 2:
        return FDREstimate(ratio, nan, nan, mean_l, mean_r, n, 0, float(confidence))
    used = k * m
    bl = lhs[n - used :].view(k, m).mean(dim=1)
    br = rhs[n - used :].view(k, m).mean(dim=1)
    residual_sd = float(torch.std(bl - ratio * br, correction=1))
    half = (
        _t_quantile(0.5 + 0.5 * float(confidence), k - 1)
        * residual_sd
        / (math.sqrt(k) * abs(float(br.mean())))
    )
    return FDREstimate(ratio, ratio - half, ratio + half, mean_l, mean_r, n, k, float(confidence))


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


class _Series:
    """Growable on-device float64 records of (O_L, O_R); no host sync per append."""

    def __init__(self) -> None:
        self.data: torch.Tensor | None = None
        self.length = 0  # rows of ``data`` in use
        self.count = 0  # records appended since the last reset
        self.offset = 0  # record index of data[0]

    def append(self, lhs: torch.Tensor, rhs: torch.Tensor) -> None:
        if self.data is None:
            self.data = torch.empty(64, 2, dtype=_F64, device=lhs.device)
        elif self.length == self.data.shape[0]:
            grown = torch.empty(2 * self.length, 2, dtype=_F64, device=self.data.device)
            grown[: self.length] = self.data
            self.data = grown
        self.data[self.length, 0] = lhs.to(self.data.device)
        self.data[self.length, 1] = rhs.to(self.data.device)
        self.length += 1
        self.count += 1

    def window(self, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Records ``[start, count)`` (clipped to what is kept), on the CPU."""
        if self.data is None or self.length == 0:
            empty = torch.zeros(0, dtype=_F64)
            return empty, empty
        first = max(int(start) - self.offset, 0)
        rows = self.data[first : self.length].to("cpu")
        return rows[:, 0].clone(), rows[:, 1].clone()

    def discard_before(self, index: int) -> None:
        drop = min(max(int(index) - self.offset, 0), self.length)
        if drop == 0 or self.data is None:
            return
        self.data = self.data[drop : self.length].clone()
        self.length -= drop
        self.offset += drop

    def reset(self) -> None:
        self.data, self.length, self.count, self.offset = None, 0, 0, 0

    def state_dict(self) -> dict[str, Any]:
        lhs, rhs = self.window(self.offset)
        return {"count": self.count, "offset": self.offset, "lhs": lhs, "rhs": rhs}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.reset()
        lhs = torch.as_tensor(state["lhs"], dtype=_F64)
        rhs = torch.as_tensor(state["rhs"], dtype=_F64)
        if lhs.numel():
            self.data = torch.stack([lhs, rhs], dim=1).to(device)
        self.length = lhs.numel()
        self.count = int(state["count"])
        self.offset = int(state["offset"])


def _check_group(group: dict[str, Any], index: int) -> None:
    for key in ("nesterov", "maximize"):
        if group.get(key, False):
            raise ValueError(
                f"Invalid {key}: param_groups[{index}] has {key}=True; the FDR observables "
                "are derived for plain heavy-ball SGD (nesterov=False, maximize=False)"
            )
    for key in ("lr", "momentum", "dampening", "weight_decay"):
        if key not in group:
            raise ValueError(f"Invalid optimizer: param_groups[{index}] has no {key!r}")
    fdr1_coefficient(group["lr"], group["momentum"], group["dampening"])
    if float(group["weight_decay"]) * float(group["lr"]) == 1.0 and group["momentum"] == 0:
        raise ValueError(f"Invalid weight_decay: lr * weight_decay == 1 in param_groups[{index}]")


def _pre_step_point(
    p: torch.Tensor, state: dict[str, Any], group: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(theta_t, b_{t+1})`` of ``p`` after torch's SGD step (``None`` if not stepped)."""
    if p.grad is None:
        return None
    if p.grad.is_sparse:
        raise ValueError("Invalid gradients: sparse gradients are not supported")
    lr = float(group["lr"])
    wd = float(group["weight_decay"])
    theta = p.detach()
    grad = p.grad.detach()
    if group["momentum"] != 0:
        buf = state.get("momentum_buffer")
        if buf is None:
            return None
        return theta + lr * buf, buf
    previous = (theta + lr * grad) / (1.0 - lr * wd) if wd != 0 else theta + lr * grad
    return previous, grad + wd * previous if wd != 0 else grad


# --------------------------------------------------------------------------------------------
# The monitor
# --------------------------------------------------------------------------------------------


class FDRMonitor:
    r"""Online FDR1 observables of a :class:`torch.optim.SGD`, per parameter group.

    After every ``optimizer.step()`` (a step post-hook, so steps that are skipped, e.g. by a
    ``GradScaler`` on overflow, record nothing) each group ``g`` appends

    * :math:`O_L = \sum_{p\in g} \theta_t\cdot(\nabla f_B + \lambda\theta_t)` (with
      :math:`\theta_t = \theta_{t+1} + \eta b_{t+1}` reconstructed; :math:`\lambda` is the
      group's ``weight_decay``), and
    * :math:`O_R = c_g \sum_{p\in g} \|b_{t+1}\|^2` with :math:`c_g` from
      :func:`fdr1_coefficient`

    to float64 records kept on the parameters' device (no host synchronisation per step).
    FDR1 says :math:`\langle O_L\rangle = \langle O_R\rangle` at stationarity (module
    docstring). Parameters without a gradient contribute nothing that step (torch does not
    move them).

    Args:
        optimizer: a :class:`torch.optim.SGD` (or subclass with its update rule) with
            ``nesterov=False`` and ``maximize=False``; ``momentum`` in ``[0, 1)`` and, with
            momentum, ``dampening`` in ``[0, 1)``.
        attach: register the post-step hook (default). With ``attach=False`` call
            :meth:`update` yourself right after each ``optimizer.step()``.

    Raises:
        ValueError: for an unsupported optimizer or group setting (naming it).

    Example:
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        >>> monitor = FDRMonitor(opt)
        >>> for _ in range(50):
        ...     opt.zero_grad()
        ...     model(torch.randn(8, 3)).pow(2).mean().backward()
        ...     opt.step()
        >>> monitor.count()
        50
        >>> estimate = monitor.estimate()  # second half of the records, ratio with its CI
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, attach: bool = True) -> None:
        if not isinstance(optimizer, torch.optim.SGD):
            raise ValueError(
                f"Invalid optimizer: {type(optimizer).__name__}; FDR observables are defined "
                "for torch.optim.SGD's update rule"
            )
        for index, group in enumerate(optimizer.param_groups):
            _check_group(group, index)
        self.optimizer = optimizer
        self.steps = 0
        self._series: list[_Series] = []
        self._fdr2: tuple[list[float], list[float]] = ([], [])
        # per FDR2 sample: (θ·∇F, Σ_g c_g ||b_g||², Σ_g c_g b_g·(Hb)_g), for curvature_estimate
        self._fdr2_extra: tuple[list[float], list[float], list[float]] = ([], [], [])
        self._handle = None
        if attach:
            self._handle = optimizer.register_step_post_hook(self._hook)

    def _hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.update()

    def detach(self) -> None:
        """Remove the post-step hook (recording stops; records are kept)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _series_for(self, index: int) -> _Series:
        while len(self._series) <= index:
            self._series.append(_Series())
        return self._series[index]

    @torch.no_grad()
    def update(self) -> None:
        """Record the observables of the step just taken (call after ``optimizer.step()``)."""
        for index, group in enumerate(self.optimizer.param_groups):
            _check_group(group, index)
            coefficient = fdr1_coefficient(group["lr"], group["momentum"], group["dampening"])
            wd = float(group["weight_decay"])
            lhs: torch.Tensor | None = None
            squares: torch.Tensor | None = None
            for p in group["params"]:
                point = _pre_step_point(p, self.optimizer.state.get(p, {}), group)
                if point is None:
                    continue
                theta, step = point
                full = p.grad.detach() + wd * theta if wd != 0 else p.grad.detach()
                term_l = torch.sum(theta * full, dtype=_F64)
                term_r = torch.sum(step * step, dtype=_F64)
                if lhs is None:
                    lhs, squares = term_l, term_r
                else:
                    lhs = lhs + term_l.to(lhs.device)
                    squares = squares + term_r.to(squares.device)
            if lhs is None:
                zero = torch.zeros((), dtype=_F64, device=self._device(group))
                lhs, squares = zero, zero
            self._series_for(index).append(lhs, coefficient * squares)
        self.steps += 1

    @staticmethod
    def _device(group: dict[str, Any]) -> torch.device:
        params = group["params"]
        return params[0].device if params else torch.device("cpu")

    # -- reading --------------------------------------------------------------------------

    def count(self, group: int | None = None) -> int:
        """Records since the last reset of ``group`` (``None``: of the groups' common tail)."""
        if group is not None:
            return self._series_for(group).count
        n = len(self.optimizer.param_groups)
        return min((self._series_for(i).count for i in range(n)), default=0)

    def records(
        self, group: int | None = None, start: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept records ``[start, count)`` of :math:`O_L, O_R` (CPU float64).

        ``group=None`` sums over groups, aligned on their common tail (every update appends to
        every group, so the last :meth:`count` records of all groups are the same steps).
        """
        if group is not None:
            return self._series_for(group).window(start)
        common = self.count(None)
        parts = []
        for i in range(len(self.optimizer.param_groups)):
            series = self._series_for(i)
            parts.append(series.window(series.count - common + int(start)))
        if not parts:
            empty = torch.zeros(0, dtype=_F64)
            return empty, empty
        length = min(lhs.numel() for lhs, _ in parts)
        total_l = sum(lhs[lhs.numel() - length :] for lhs, _ in parts)
        total_r = sum(rhs[rhs.numel() - length :] for _, rhs in parts)
        return total_l, total_r

    def estimate(
        self,
        group: int | None = None,
        *,
        start: int | None = None,
        n_batches: int = 20,
        confidence: float = 0.95,
    ) -> FDREstimate:
        """FDR1 ratio :math:`\\bar O_L/\\bar O_R` with its batch-means interval.

        Args:
            group: a group index, or ``None`` for the sum over groups.
            start: first record to use; default ``count // 2`` (Yaida's half-running
                average: the first half is treated as transient).
            n_batches, confidence: see :func:`batch_means_ratio`.
        """
        count = self.count(group)
        start = count // 2 if start is None else int(start)
        lhs, rhs = self.records(group, start)
        return batch_means_ratio(lhs, rhs, n_batches=n_batches, confidence=confidence)

    def reset(self, group: int | None = None) -> None:
        """Clear the records of ``group`` (``None``: of every group and the FDR2 samples)."""
        if group is None:
            for series in self._series:
                series.reset()
            self._fdr2 = ([], [])
            self._fdr2_extra = ([], [], [])
        else:
            self._series_for(group).reset()

    def discard_before(self, group: int, index: int) -> None:
        """Free the records of ``group`` before record ``index`` (counts are unchanged)."""
        self._series_for(group).discard_before(index)

    # -- FDR2 ------------------------------------------------------------------------------

    @torch.no_grad()
    def observe_fdr2(
        self, function: ParameterFunction, *, hessian: bool = True
    ) -> tuple[float, float]:
        r"""Measure both sides of FDR2 at the current state and record them.

        With :math:`\nabla F = \nabla L + \lambda\theta` (``function``'s loss plus each group's
        L2 term) and :math:`H = \nabla^2 L + \lambda I`, at the current parameters and buffers:

        * left: :math:`\sum_g (w_g/w_0)\,\|\nabla_g F\|^2`,
        * right: :math:`\sum_g \tfrac{1+\mu_g}{2(1-\mu_g)}\,(\eta_g/w_0)\,
          b_g\cdot(H\Lambda b)_g`,

        :math:`w_g = \eta_g(1-\delta_g)/(1-\mu_g)` (module docstring); for a single group these
        are :math:`\|\nabla F\|^2` and :math:`\tfrac\eta2\tfrac{1+\mu}{1-\delta} b^\top H b`.
        Cost: one gradient and one Hessian-vector product of ``function`` over its data (use the
        full training set, or a large subset: a subset of N samples inflates the left side by
        about tr(C)/N). Call it every k steps; :meth:`fdr2_estimate` averages the samples.
        Each sample also records :math:`\theta\cdot\nabla F` and :math:`\sum_g c_g\|b_g\|^2`
        (free: the same gradient) for :meth:`curvature_estimate`.

        Args:
            function: a :class:`~torchvalley.curvature.function.ParameterFunction` of the
                optimized model; every optimized parameter must be among its parameters.
            hessian: compute the Hessian-vector product (default). ``False`` skips it (one
                gradient per sample): ``right`` is then ``nan``, and only the fluctuation
                estimates of :meth:`curvature_estimate` are available.

        Returns:
            ``(left, right)`` of this sample.

        Raises:
            ValueError: if an optimized parameter is not one of ``function``'s.
        """
        named = dict(function.model.named_parameters())
        position = {id(named[name]): i for i, name in enumerate(function.names)}
        point = function.point()
        direction = [torch.zeros_like(t) for t in point]
        entries = []  # (index in function, group, b)
        for gi, group in enumerate(self.optimizer.param_groups):
            _check_group(group, gi)
            for p in group["params"]:
                if id(p) not in position:
                    raise ValueError(
                        "Invalid function: an optimized parameter is not among its parameters"
                    )
                pre = _pre_step_point(p, self.optimizer.state.get(p, {}), group)
                if pre is None:
                    continue
                i = position[id(p)]
                direction[i] = float(group["lr"]) * pre[1].to(point[i].dtype)
                entries.append((i, group, pre[1]))
        with torch.enable_grad():
            gradient = function.gradient(point)
            product = function.hvp(tuple(direction), point) if hessian else None
        first = self.optimizer.param_groups[0]
        w0 = _fdr2_weight(first)
        left = right = virial = kinetic = curvature = 0.0
        for i, group, step in entries:
            wd = float(group["weight_decay"])
            mu = float(group["momentum"])
            lr = float(group["lr"])
            c = fdr1_coefficient(lr, mu, group["dampening"])
            grad_f = gradient[i] + wd * point[i]
            left += _fdr2_weight(group) / w0 * float(torch.sum(grad_f * grad_f, dtype=_F64))
            virial += float(torch.sum(point[i] * grad_f, dtype=_F64))
            kinetic += c * float(torch.sum(step * step, dtype=_F64))
            if product is not None:
                hu = product[i] + wd * direction[i]  # (H + λI) η b
                b_hu = float(torch.sum(step * hu, dtype=_F64))
                right += (1.0 + mu) / (2.0 * (1.0 - mu)) * lr / w0 * b_hu
                curvature += c / lr * b_hu
        if product is None:
            right = curvature = math.nan
        self._fdr2[0].append(left)
        self._fdr2[1].append(right)
        self._fdr2_extra[0].append(virial)
        self._fdr2_extra[1].append(kinetic)
        self._fdr2_extra[2].append(curvature)
        return left, right

    def fdr2_estimate(
        self, *, start: int = 0, n_batches: int = 20, confidence: float = 0.95
    ) -> FDREstimate:
        """FDR2 ratio (left/right) over the recorded :meth:`observe_fdr2` samples from ``start``."""
        lhs = torch.tensor(self._fdr2[0][start:], dtype=_F64)
        rhs = torch.tensor(self._fdr2[1][start:], dtype=_F64)
        return batch_means_ratio(lhs, rhs, n_batches=n_batches, confidence=confidence)

    def curvature_estimate(
        self, *, start: int = 0, n_batches: int = 20, confidence: float = 0.95
    ) -> FDRCurvature:
        r"""The Hessian's magnitude along the SGD velocity, from fluctuations (Yaida §4).

        Over the :meth:`observe_fdr2` samples from ``start`` (module docstring,
        "The Hessian's magnitude from fluctuations"):

        * ``fluctuation``: :math:`\langle\|\nabla F\|^2\rangle / \langle\theta\cdot\nabla
          F\rangle` (FDR2 / FDR1; gradients only),
        * ``kinetic``: :math:`\langle\|\nabla F\|^2\rangle / (c\,\langle\|b\|^2\rangle)`
          (FDR2 with the measured velocity; gradients only),
        * ``direct``: :math:`\langle b^\top H b\rangle / \langle\|b\|^2\rangle` (Hessian-vector
          products; ``None`` if a sample was taken with ``hessian=False``),

        each a ratio of time averages with its batch-means interval. :math:`H` includes the
        groups' weight decay (:math:`\nabla^2 L + \lambda I`).

        Raises:
            ValueError: if the groups differ in ``lr``, ``momentum`` or (with momentum)
                ``dampening`` (the coefficients of FDR1 and FDR2 then do not cancel).
        """
        settings = {
            (float(g["lr"]), float(g["momentum"]), _fdr2_weight(g))
            for g in self.optimizer.param_groups
        }
        if len(settings) > 1:
            raise ValueError(
                "Invalid optimizer: curvature_estimate needs the same lr, momentum and "
                "dampening in every parameter group"
            )
        options = dict(n_batches=n_batches, confidence=confidence)
        left = torch.tensor(self._fdr2[0][start:], dtype=_F64)
        virial, kinetic, curvature = (
            torch.tensor(series[start:], dtype=_F64) for series in self._fdr2_extra
        )
        direct = None
        if curvature.numel() and bool(torch.isfinite(curvature).all()):
            direct = batch_means_ratio(curvature, kinetic, **options)
        return FDRCurvature(
            fluctuation=batch_means_ratio(left, virial, **options),
            kinetic=batch_means_ratio(left, kinetic, **options),
            direct=direct,
        )

    # -- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The records and counters (plain tensors, ints and lists: ``torch.save``-able)."""
        n = len(self.optimizer.param_groups)
        return {
            "steps": self.steps,
            "series": [self._series_for(i).state_dict() for i in range(n)],
            "fdr2": (list(self._fdr2[0]), list(self._fdr2[1])),
            "fdr2_extra": tuple(list(series) for series in self._fdr2_extra),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (records go to the groups' devices)."""
        self.steps = int(state["steps"])
        self._series = []
        for i, series_state in enumerate(state["series"]):
            groups = self.optimizer.param_groups
            device = self._device(groups[i]) if i < len(groups) else torch.device("cpu")
            self._series_for(i).load_state_dict(series_state, device)
        self._fdr2 = (list(state["fdr2"][0]), list(state["fdr2"][1]))
        n = len(self._fdr2[0])
        extra = state.get("fdr2_extra", ([math.nan] * n,) * 3)  # states saved before it existed
        virial, kinetic, curvature = (list(series) for series in extra)
        self._fdr2_extra = (virial, kinetic, curvature)


@dataclasses.dataclass(frozen=True)
class FDRCurvature:
    r"""Curvature along the SGD velocity, :math:`\langle b^\top Hb\rangle/\langle\|b\|^2\rangle`.

    From :meth:`FDRMonitor.curvature_estimate`; each field is an :class:`FDREstimate` whose
    ``ratio`` is the curvature (not 1 at equilibrium) with its batch-means interval.

    Attributes:
        fluctuation: :math:`\langle\|\nabla F\|^2\rangle/\langle\theta\cdot\nabla F\rangle`
            (FDR2 / FDR1, gradients only).
        kinetic: :math:`\langle\|\nabla F\|^2\rangle/(c\langle\|b\|^2\rangle)` (FDR2 and the
            measured velocity, gradients only).
        direct: :math:`\langle b^\top Hb\rangle/\langle\|b\|^2\rangle` from Hessian-vector
            products, or ``None``.
    """

    fluctuation: FDREstimate
    kinetic: FDREstimate
    direct: FDREstimate | None

    @property
    def anharmonicity(self) -> float:
        """``kinetic.ratio / direct.ratio - 1`` (the FDR2 ratio minus 1; ``nan`` without
        ``direct``): 0 for a quadratic loss, the relative size of the higher-order terms."""
        if self.direct is None:
            return math.nan
        return self.kinetic.ratio / self.direct.ratio - 1.0


def _fdr2_weight(group: dict[str, Any]) -> float:
    mu = float(group["momentum"])
    damping = float(group["dampening"]) if mu != 0 else 0.0
    return float(group["lr"]) * (1.0 - damping) / (1.0 - mu)


# --------------------------------------------------------------------------------------------
# The scheduler
# --------------------------------------------------------------------------------------------


class FDRScheduler(LRScheduler):
    r"""Quench the learning rate when SGD has equilibrated, as measured by FDR1 (Yaida 2019).

    Use like any torch LR scheduler, stepped once per optimizer step::

        scheduler = FDRScheduler(optimizer)          # Yaida's defaults
        for inputs, targets in loader:
            optimizer.zero_grad()
            loss_fn(model(inputs), targets).backward()
            optimizer.step()                          # the monitor records O_L, O_R here
            scheduler.step()                          # the quench test runs here

    **Yaida's rule** (``mode="yaida"``, default; ``FDR_quencher`` in the reference code), per
    parameter group: let t be the number of steps since the group's last quench. Whenever t
    reaches a multiple of ``window`` (:math:`t_\mathrm{adaptive}`, default 1000), average the
    records over the second half, :math:`\bar O_{L,R} = \mathrm{mean}(O_{L,R}[\lfloor t/2
    \rfloor : t])`; if :math:`|\bar O_L/\bar O_R - 1| <` ``threshold`` (X, default 0.01) then
    ``lr <- lr * factor`` (``factor`` = 1 - Y, default 0.1), the group's records are cleared and
    t restarts at 0. (If the scheduler is stepped less often than the optimizer, the test runs
    at the first ``step()`` at or after each multiple.)

    **Statistical variant** (``mode="ci"``): at the same times and on the same records, the
    batch-means interval of :func:`batch_means_ratio` (``n_batches``, ``confidence``) is
    computed, and the group is quenched when the interval contains 1 *and* its half-width is at
    most ``max_halfwidth`` (so "consistent with equilibrium" requires enough precision to
    mean something; a hopelessly noisy window does not quench).

    ``per_group=False`` tests the sum over all groups and quenches all of them together.
    Yaida's README: use a non-zero weight decay, otherwise SGD typically does not equilibrate.

    Args:
        optimizer: a :class:`torch.optim.SGD` (see :class:`FDRMonitor`).
        window: :math:`t_\mathrm{adaptive}` ``>= 2`` (steps).
        threshold: Yaida's X ``> 0``.
        factor: multiplier of the lr at a quench, in ``(0, 1)`` (Yaida's 1 - Y).
        mode: ``"yaida"`` or ``"ci"``.
        per_group: test and quench each group separately (Yaida) or all together.
        n_batches, confidence: the interval (``mode="ci"``; also reported in ``"yaida"``).
        max_halfwidth: largest interval half-width that may quench (``mode="ci"``), ``> 0``.
        min_lr: the lr is never quenched below this (``>= 0``).
        last_epoch: as in :class:`~torch.optim.lr_scheduler.LRScheduler`.

    Attributes:
        monitor: the :class:`FDRMonitor` recording the observables.
        quenches: one dict per quench: ``step`` (the monitor's step count), ``group``,
            ``lr`` (new), ``ratio``, ``lower``, ``upper``.
        last_estimates: per group, the latest tested :class:`FDREstimate` as a dict (or
            ``None``).
        history: one dict per test (every ``window`` steps): ``step``, ``group`` (``-1`` for
            all groups together), ``ratio``, ``lower``, ``upper``, ``quenched``.

    Raises:
        ValueError: for an invalid argument, naming it.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        window: int = 1000,
        threshold: float = 0.01,
        factor: float = 0.1,
        mode: Literal["yaida", "ci"] = "yaida",
        per_group: bool = True,
        n_batches: int = 20,
        confidence: float = 0.95,
        max_halfwidth: float = 0.1,
        min_lr: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        check_int_at_least("window", window, 2)
        if not float(threshold) > 0.0:
            raise ValueError(f"Invalid threshold: {threshold} (need threshold > 0)")
        if not 0.0 < float(factor) < 1.0:
            raise ValueError(f"Invalid factor: {factor} (need 0 < factor < 1)")
        check_choice("mode", mode, ("yaida", "ci"))
        check_int_at_least("n_batches", n_batches, 5)
        if not 0.0 < float(confidence) < 1.0:
            raise ValueError(f"Invalid confidence: {confidence} (need 0 < confidence < 1)")
        if not float(max_halfwidth) > 0.0:
            raise ValueError(f"Invalid max_halfwidth: {max_halfwidth} (need > 0)")
        if not float(min_lr) >= 0.0:
            raise ValueError(f"Invalid min_lr: {min_lr} (need min_lr >= 0)")
        self.monitor = FDRMonitor(optimizer)
        self.window = int(window)
        self.threshold = float(threshold)
        self.factor = float(factor)
        self.mode = str(mode)
        self.per_group = bool(per_group)
        self.n_batches = int(n_batches)
        self.confidence = float(confidence)
        self.max_halfwidth = float(max_halfwidth)
        self.min_lr = float(min_lr)
        self.quenches: list[dict[str, float]] = []
        self.last_estimates: list[dict[str, float] | None] = []
        self.history: list[dict[str, float]] = []
        self._next_check: list[int] = []
        self._active = False
        super().__init__(optimizer, last_epoch)
        self._active = True

    # -- the rule ---------------------------------------------------------------------------

    def _is_equilibrated(self, estimate: FDREstimate) -> bool:
        if self.mode == "yaida":
            return abs(estimate.ratio - 1.0) < self.threshold
        return estimate.contains_one and estimate.halfwidth <= self.max_halfwidth

    def _test(self, group: int | None) -> tuple[bool, FDREstimate | None]:
        """Run the test for ``group`` (``None``: all together) if its time has come."""
        key = 0 if group is None else group
        while len(self._next_check) <= key:
            self._next_check.append(self.window)
        t = self.monitor.count(group)
        if t == 0 or t < self._next_check[key]:
            return False, None
        self._next_check[key] = (t // self.window + 1) * self.window
        estimate = self.monitor.estimate(
            group, start=t // 2, n_batches=self.n_batches, confidence=self.confidence
        )
        return self._is_equilibrated(estimate), estimate

    def _note(self, group: int, estimate: FDREstimate) -> None:
        while len(self.last_estimates) <= group:
            self.last_estimates.append(None)
        self.last_estimates[group] = dataclasses.asdict(estimate)

    def _quenched_lr(self, lr: Any) -> Any:
        return (
            max(lr * self.factor, self.min_lr)
            if not isinstance(lr, torch.Tensor)
            else (torch.clamp(lr * self.factor, min=self.min_lr))
        )

    def get_lr(self) -> list[Any]:
        """The groups' learning rates after this step's quench test (see the class docstring)."""
        groups = self.optimizer.param_groups
        lrs = [group["lr"] for group in groups]
        if not self._active:
            return lrs
        selected = range(len(groups)) if self.per_group else [None]
        for group in selected:
            quench, estimate = self._test(group)
            if estimate is None:
                continue
            members = range(len(groups)) if group is None else [group]
            for gi in members:
                self._note(gi, estimate)
            changed = False
            if quench:
                for gi in members:
                    new = self._quenched_lr(lrs[gi])
                    if float(new) < float(lrs[gi]):
                        lrs[gi] = new
                        changed = True
            self.history.append(
                {
                    "step": self.monitor.steps,
                    "group": -1 if group is None else group,
                    "ratio": estimate.ratio,
                    "lower": estimate.lower,
                    "upper": estimate.upper,
                    "quenched": changed,
                }
            )
            if changed:
                for gi in members:
                    self.monitor.reset(gi)
                    self.quenches.append(
                        {
                            "step": self.monitor.steps,
                            "group": gi,
                            "lr": float(lrs[gi]),
                            "ratio": estimate.ratio,
                            "lower": estimate.lower,
                            "upper": estimate.upper,
                        }
                    )
                self._next_check[0 if group is None else group] = self.window
            else:
                # Records before t/2 are never used again: free them.
                for gi in members:
                    self.monitor.discard_before(gi, self.monitor.count(gi) // 2)
        return lrs

    # -- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state, the monitor's records included (``torch.save``-able)."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "monitor")}
        state["monitor"] = self.monitor.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        state = dict(state_dict)
        monitor_state = state.pop("monitor")
        self.__dict__.update(state)
        self.monitor.load_state_dict(monitor_state)
