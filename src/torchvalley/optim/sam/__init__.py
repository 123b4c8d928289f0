r"""Sharpness-aware minimization: one wrapper, pluggable ascent geometries, any base optimizer.

One :meth:`SAM.step` (``closure`` zeroes grads, runs forward and backward, returns the loss)::

    loss = closure()                   # clean pass at w: g = grad L(w)
    backup = w                         # exact copy of the perturbed parameters (and BN buffers)
    w = w + eps(w, g)                  # climb to the worst case in the method's metric
    closure()                          # gradient at w + eps
    w = backup                         # restore bit for bit (also on an exception)
    clip(grad); base_optimizer.step()  # descend from w with the SAM gradient
    return loss

Every method solves, to first order, the inner problem of

.. math::

    \min_w \max_{\epsilon^\top M \epsilon \le \rho^2} L(w + \epsilon)
    \quad\Rightarrow\quad
    \hat\epsilon = \rho\, \frac{M^{-1} g}{\sqrt{g^\top M^{-1} g}},

and the *ascent rule* (:mod:`~torchvalley.optim.sam.ascent`) chooses :math:`M`: ``sam``
(:math:`I`), ``asam`` (:math:`T_w^{-2}`, :math:`T_w = |w| + \eta`), ``fisher``
(:math:`\mathrm{diag}(1 + \eta_F g^2)`), ``monge`` (:math:`I + g g^\top`) and ``riemannian``
(each parameter's manifold: metric norm, retraction, gradient transported back). With several
groups the norm is taken over all perturbed parameters and each group uses its own ``rho``;
``perturb`` selects what is perturbed, while everything with a gradient is updated.

Papers: Foret et al., *Sharpness-Aware Minimization*, ICLR 2021; Kwon et al., *ASAM*, ICML
2021 (the official element-wise operator; ``normalize_bias=True, eta=0`` is davda54's variant);
Kim et al., *Fisher SAM*, ICML 2022; Jacobsen & Arvanitidis, *Monge SAM*, 2025; Mueller et al.,
*Normalization Layers Are All That SAM Needs*, NeurIPS 2023 (``perturb="norm"``); Yun & Yang,
*Riemannian SAM*, NeurIPS 2023 (``lorentz_sam``). DDP, ``GradScaler``, BatchNorm and
``swap_storage`` details are documented on the methods they govern
(:mod:`~torchvalley.optim.sam.systems`).

Efficient variants on the same wrapper (any ascent, any base): :class:`LookSAM` (a SAM step
every ``k`` steps, 1 + 1/k passes), :class:`ESAM` (stochastic weight perturbation and
sharpness-sensitive data selection) and :class:`MESA` (no second pass: a KL term against an
EMA of the weights). :class:`WindowSAM` takes SAM steps only in the first or last
``fraction`` of ``total_steps`` (1 + fraction passes per step on average).

Variants that change what the two gradients become (:mod:`~torchvalley.optim.sam.variants`, same
wrapper): :class:`GSAM` (surrogate gap), :class:`WSAM` (weighted sharpness), :class:`FriendlySAM`
(ascent without the full-gradient component); ``gradient_centralization=True`` on any of them
centralizes the final gradient. :class:`BSAM` (:mod:`~torchvalley.optim.sam.bsam`) is Bayesian
SAM with its own variational-Adam update.

Example:
    >>> import torch
    >>> from torchvalley.optim import SAM
    >>> model = torch.nn.Linear(3, 1)
    >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
    >>> opt = SAM(model.parameters(), base_optimizer="sgd", rho=0.05, lr=0.1, momentum=0.9)
    >>> def closure():
    ...     opt.zero_grad()
    ...     loss = torch.nn.functional.mse_loss(model(x), y)
    ...     loss.backward()
    ...     return loss
    >>> loss = opt.step(closure)
"""

from torchvalley.optim.sam.ascent import ASCENT_RULES as ASCENT_RULES
from torchvalley.optim.sam.ascent import AscentRule as AscentRule
from torchvalley.optim.sam.bsam import BSAM as BSAM
from torchvalley.optim.sam.engine import NORMALIZATION_TYPES as NORMALIZATION_TYPES
from torchvalley.optim.sam.engine import SAM as SAM
from torchvalley.optim.sam.engine import normalization_parameters as normalization_parameters
from torchvalley.optim.sam.esam import ESAM as ESAM
from torchvalley.optim.sam.looksam import LookSAM as LookSAM
from torchvalley.optim.sam.mesa import MESA as MESA
from torchvalley.optim.sam.variants import GSAM as GSAM
from torchvalley.optim.sam.variants import WSAM as WSAM
from torchvalley.optim.sam.variants import FriendlySAM as FriendlySAM
from torchvalley.optim.sam.window import WindowSAM as WindowSAM

__all__ = [
    "ASCENT_RULES",
    "BSAM",
    "ESAM",
    "GSAM",
    "MESA",
    "SAM",
    "WSAM",
    "FriendlySAM",
    "LookSAM",
    "WindowSAM",
    "normalization_parameters",
]
