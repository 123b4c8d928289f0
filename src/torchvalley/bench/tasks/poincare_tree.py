"""The ``poincare_tree`` task: a Poincaré embedding of a random tree (Nickel & Kiela 2017).

The problem library (tree, closure, embedding, loss, sampler, metrics) is
:mod:`torchvalley.bench.poincare`; this module holds the task's data and model and registers
it. Train inputs are ``[u, v, v'_1, …, v'_K]`` rows with fixed negatives per data seed; the test
set is the reconstruction of the closure, scored by its MAP. The task needs a Riemannian
optimizer (``rsgd``, ``radam``, ``ramsgrad``, ``radagrad``): a Euclidean step can leave the ball.
"""

from __future__ import annotations

import torch

from torchvalley.bench.poincare import (
    NegativeSampler,
    PoincareEmbedding,
    _derived_seed,
    poincare_loss,
    random_tree,
    ranking_map,
    transitive_closure,
)
from torchvalley.bench.task import Task, TaskData, register_task

__all__ = [
    "TASK_BATCH_SIZE",
    "TASK_BRANCHING",
    "TASK_DIM",
    "TASK_NEGATIVES",
    "TASK_NODES",
    "build_task_model",
    "load_tree_task",
]

#: Nodes of the task's tree (its closure has 887 pairs for data seed 0).
TASK_NODES = 250
#: Branching range of the task's tree.
TASK_BRANCHING = (2, 5)
#: Negatives per training pair of the task (pre-sampled, fixed per data seed).
TASK_NEGATIVES = 50
#: Dimension of the task's ball.
TASK_DIM = 5
#: Batch size of the task.
TASK_BATCH_SIZE = 10


def load_tree_task(data_seed: int) -> TaskData:
    """The ``poincare_tree`` data: a random tree's closure, with negatives fixed per data seed.

    The tree is ``random_tree(TASK_NODES, TASK_BRANCHING, seed=data_seed)`` and the positives
    are its transitive closure. Train inputs are ``[u, v, v'_1, …, v'_K]`` rows (``K =
    TASK_NEGATIVES`` uniform negatives drawn once, from a generator seeded by ``data_seed``) with
    targets 0 (the positive's column). Unlike ``train_poincare`` of
    ``benchmarks/poincare_embeddings.py``, which re-samples negatives every epoch and has a
    burn-in, the harness sees the same negatives every epoch.

    The test set is the reconstruction: one row ``[u, all other nodes in increasing order]``
    per node, with a boolean ``(n, n − 1)`` target matrix marking ``u``'s neighbours in the
    undirected closure, so that :func:`ranking_map` on it is the reconstruction MAP of
    :func:`reconstruction_metrics` and :func:`poincare_loss` the loss against all
    non-neighbours.

    Args:
        data_seed: seed of the tree and of the negatives.

    Returns:
        The :class:`~torchvalley.bench.tasks.TaskData`.
    """
    tree = random_tree(TASK_NODES, TASK_BRANCHING, seed=data_seed)
    closure = transitive_closure(tree)
    sampler = NegativeSampler(
        closure, TASK_NODES, TASK_NEGATIVES, seed=_derived_seed("task-negatives", data_seed)
    )
    train_inputs = sampler.batch(closure)
    train_targets = torch.zeros(closure.shape[0], dtype=torch.int64)
    nodes = torch.arange(TASK_NODES)
    others = torch.stack([torch.cat([nodes[:u], nodes[u + 1 :]]) for u in range(TASK_NODES)])
    test_inputs = torch.cat([nodes[:, None], others], dim=1)
    labels = sampler.adjacency.label_rows(nodes)
    test_targets = torch.gather(labels, 1, others)
    return TaskData(train=(train_inputs, train_targets), test=(test_inputs, test_targets))


def build_task_model() -> PoincareEmbedding:
    """The ``poincare_tree`` model: ``PoincareEmbedding(TASK_NODES, TASK_DIM)`` in float64.

    Initialised from the global torch RNG, which :meth:`Task.model` seeds.
    """
    return PoincareEmbedding(TASK_NODES, TASK_DIM)


register_task(
    Task(
        name="poincare_tree",
        description=(
            f"Poincaré embedding (dim {TASK_DIM}, float64) of the closure of a random "
            f"{TASK_NODES}-node tree, {TASK_NEGATIVES} fixed negatives per "
            "pair; metric: reconstruction MAP. Needs a Riemannian optimizer (e.g. radam, rsgd)"
        ),
        model_name=f"PoincareEmbedding {TASK_NODES}×{TASK_DIM} (ball, c=1)",
        build_model=build_task_model,
        load_data=load_tree_task,
        loss_fn=poincare_loss,
        metric_name="map",
        metric_fn=ranking_map,
        higher_is_better=True,
        # measured (data seed 0, seed 0, 100 epochs): rsgd lr 0.3 reaches MAP 0.85 at epoch 88
        # (0.87 at 100); with the negatives fixed, radam/ramsgrad lr 0.01 plateau near 0.70 and
        # radagrad lr 0.1 reaches 0.54, so the target separates the methods
        target=0.85,
        batch_size=TASK_BATCH_SIZE,
        default_epochs=100,
        default_data_seed=0,
        reference=(
            "Nickel & Kiela, Poincaré Embeddings for Learning Hierarchical Representations, "
            "NeurIPS 2017 (facebookresearch/poincare-embeddings); Bécigneul & Ganea, Riemannian "
            "Adaptive Optimization Methods, ICLR 2019"
        ),
        info={
            "nodes": TASK_NODES,
            "branching": TASK_BRANCHING,
            "dim": TASK_DIM,
            "negatives": TASK_NEGATIVES,
            "negatives_fixed_per_data_seed": True,
            "recommended_optimizers": ("radam", "rsgd", "ramsgrad", "radagrad"),
            "euclidean_optimizers": "unsuitable: they can step points out of the Poincaré ball",
            "test_set": "one row per node against all other nodes (reconstruction)",
        },
    )
)
