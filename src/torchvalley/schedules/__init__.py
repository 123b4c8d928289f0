"""Training-loop schedules driven by landscape measurements.

* :mod:`torchvalley.schedules.abs`: ABS / ABSA (Yao et al. 2018), the batch size grown by
  gradient accumulation when the top Hessian eigenvalue drops, with FGSM adversarial examples.
"""

from __future__ import annotations

from torchvalley.schedules.abs import (
    HESSIANFLOW_DEFAULTS,
    AdaptiveBatchSchedule,
    AdaptiveBatchSize,
    top_hessian_eigenvalue,
)

__all__ = [
    "HESSIANFLOW_DEFAULTS",
    "AdaptiveBatchSchedule",
    "AdaptiveBatchSize",
    "top_hessian_eigenvalue",
]
