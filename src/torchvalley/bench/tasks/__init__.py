"""The built-in benchmark tasks, one module per family, and the task registry's public names.

Importing this package registers every built-in task:

* :mod:`~torchvalley.bench.tasks.mnist1d`: ``mnist1d_mlp``, ``mnist1d_cnn``;
* :mod:`~torchvalley.bench.tasks.digits`: ``digits_mlp``, ``digits_cnn`` (needs scikit-learn);
* :mod:`~torchvalley.bench.tasks.spirals`: ``spirals`` (the AdLaLa paper's two spirals);
* :mod:`~torchvalley.bench.tasks.quadratic`: ``quadratic`` (known Hessian, exact excess loss);
* :mod:`~torchvalley.bench.tasks.poincare_tree`: ``poincare_tree`` (hyperbolic embedding);
* :mod:`~torchvalley.bench.tasks.transfer`: ``mnist1d_transfer`` (fine-tune a pretrained CNN);
* :mod:`~torchvalley.bench.tasks.kg_hierarchy`: ``kg_hierarchy``, ``kg_hierarchy_lorentz``
  (hyperbolic link prediction on a tree's knowledge graph; their own ``@validation`` splits);
* :mod:`~torchvalley.bench.tasks.label_noise`: ``<mnist1d|digits>_<mlp|cnn>_noise<20|40|60>``
  (symmetric noise on the training labels), ``mnist1d_mlp_wide``.

:class:`Task`, :class:`TaskData` and the registry functions are defined in
:mod:`torchvalley.bench.task`, which imports no task, and re-exported here. A new task family
is one module here that calls :func:`register_task`, plus one import line below.
"""

from torchvalley.bench.task import (
    _TASKS,  # noqa: F401
    Task,
    TaskData,
    _cached_data,  # noqa: F401
    get_task,
    list_tasks,
    register_task,
    require_extra,
    task_entries,
)
from torchvalley.bench.tasks import (
    digits,
    kg_hierarchy,
    label_noise,
    mnist1d,
    poincare_tree,
    quadratic,
    spirals,
    transfer,
)

__all__ = [
    "Task",
    "TaskData",
    "digits",
    "get_task",
    "kg_hierarchy",
    "label_noise",
    "list_tasks",
    "mnist1d",
    "poincare_tree",
    "quadratic",
    "register_task",
    "require_extra",
    "spirals",
    "task_entries",
    "transfer",
]
