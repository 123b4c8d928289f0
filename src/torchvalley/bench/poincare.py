"""Poincaré embeddings of a hierarchy (Nickel & Kiela, NeurIPS 2017) as an optimizer benchmark.

Nickel & Kiela, "Poincaré Embeddings for Learning Hierarchical Representations", NeurIPS 2017
(https://arxiv.org/abs/1705.08039; reference code: https://github.com/facebookresearch/
poincare-embeddings). The nodes of a hierarchy are embedded in the Poincaré ball 𝔻ⁿ (curvature
−1) by minimising, over the pairs ``(u, v)`` of the hierarchy's transitive closure, the softmax
loss

    L(u, v) = −log( e^{−d(u, v)} / Σ_{v' ∈ {v} ∪ N(u)} e^{−d(u, v')} ),

where ``N(u)`` are ``K`` sampled nodes that are not related to ``u``. Bécigneul & Ganea
("Riemannian Adaptive Optimization Methods", ICLR 2019) use the same problem (WordNet nouns and
mammals, 5-dimensional ball) to compare RSGD with RAdam, RAMSGrad and RAdagrad.

What this module provides:

* data: :func:`random_tree` (an offline, seeded random hierarchy of ~10³ nodes),
  :func:`transitive_closure`, and :func:`load_closure_csv` for the WordNet closure files of the
  reference code (``wordnet/mammal_closure.csv``; never downloaded here);
* :class:`PoincareEmbedding` (a ``ManifoldParameter`` table on :class:`~torchvalley.manifolds.
  PoincareBall`), :func:`poincare_loss` and :class:`NegativeSampler`;
* :func:`reconstruction_metrics`: mean rank and mean average precision (MAP) of the
  reconstruction of the closure, as ``reconstruction_worker`` of the reference code, vectorized,
  with :func:`average_precision` (equal to ``sklearn.metrics.average_precision_score``, ties
  included);
* :func:`ranking_map`, the reconstruction MAP as a harness metric.

The ``poincare_tree`` harness task (its data and model) is :mod:`torchvalley.bench.tasks.
poincare_tree`; Nickel & Kiela's full training procedure (burn-in, negatives re-sampled every
epoch) is ``train_poincare`` in ``benchmarks/poincare_embeddings.py``.

Precision policy: hyperbolic parameters are float64 by default, as everywhere in torchvalley.
:meth:`PoincareBall.projx` keeps points at norm ``1 − boundary_eps(dtype)``, so the largest
distance to the origin is ``2·artanh(1 − eps)``: about 12.2 in float64 (eps = 1e-5) but only
about 6.2 in float32 (eps = 4e-3). A hierarchy of depth ~10 needs leaves farther out than that,
so in float32 the embedding saturates at the boundary and distances between leaves stop being
informative.

The ball must be respected by the optimizer: a Euclidean optimizer (``"sgd"``, ``"adam"``) can
step a point outside the ball, where distances are meaningless (NaN or huge). Use a Riemannian
optimizer that honours ``ManifoldParameter`` (``"rsgd"``, ``"radam"``, ``"ramsgrad"``,
``"radagrad"``): Riemannian gradient ``egrad2rgrad`` followed by the retraction
``projx(x + u)``.

Randomness: everything here draws from private generators (``numpy.random.Generator`` for the
tree, ``torch.Generator`` for initialisation, negatives and shuffling); the global RNGs are
neither used nor changed.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from torchvalley.manifolds import Manifold, ManifoldParameter, PoincareBall

__all__ = [
    "NegativeSampler",
    "PoincareEmbedding",
    "average_precision",
    "load_closure_csv",
    "poincare_loss",
    "random_tree",
    "ranking_map",
    "reconstruction_metrics",
    "transitive_closure",
]

# Names that moved: the task's pieces to torchvalley.bench.tasks.poincare_tree (read lazily
# here, so that this library module imports no task).
_MOVED_TO_TASK_FUNCTIONS = ("build_task_model", "load_tree_task")  # and the TASK_* constants


def __getattr__(name: str) -> Any:
    if name.startswith("TASK_") or name in _MOVED_TO_TASK_FUNCTIONS:
        from torchvalley.bench.tasks import poincare_tree

        return getattr(poincare_tree, name)
    if name in ("train_poincare", "PoincareResult"):
        raise AttributeError(
            f"{name} moved out of the library to benchmarks/poincare_embeddings.py (the harness "
            "task is torchvalley.bench.tasks.poincare_tree)"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


EdgeLike = Tensor | np.ndarray | Sequence[tuple[int, int]] | Sequence[Sequence[int]]


def _derived_seed(purpose: str, seed: int) -> int:
    """A 63-bit seed derived from ``seed`` for one purpose (independent streams per purpose)."""
    digest = hashlib.sha256(f"torchvalley-poincare-{purpose}-{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _as_edges(edges: EdgeLike, n_nodes: int | None = None) -> Tensor:
    """``edges`` as a contiguous int64 tensor of shape ``(E, 2)``, checked against ``n_nodes``."""
    if isinstance(edges, Tensor):
        tensor = edges.detach().to(device="cpu", dtype=torch.int64)
    else:
        tensor = torch.as_tensor(np.asarray(edges, dtype=np.int64).reshape(-1, 2))
    if tensor.ndim != 2 or tensor.shape[1] != 2:
        raise ValueError(f"edges must have shape (E, 2), got {tuple(tensor.shape)}")
    if tensor.numel() and int(tensor.min()) < 0:
        raise ValueError("edges must hold non-negative node indices")
    if n_nodes is not None and tensor.numel() and int(tensor.max()) >= n_nodes:
        raise ValueError(f"edges refer to node {int(tensor.max())} but n_nodes is {n_nodes}")
    return tensor.contiguous()


def _n_nodes(edges: Tensor, n_nodes: int | None) -> int:
    if n_nodes is not None:
        return int(n_nodes)
    return int(edges.max()) + 1 if edges.numel() else 0


# --------------------------------------------------------------------------------------------
# Data: random trees, transitive closures, WordNet closure CSVs
# --------------------------------------------------------------------------------------------


def random_tree(
    n_nodes: int = 1000, branching: tuple[int, int] = (2, 6), seed: int = 0
) -> list[tuple[int, int]]:
    """A random rooted tree, grown breadth-first, as ``(child, parent)`` edges.

    Node 0 is the root. Nodes are expanded in breadth-first order; each expanded node gets a
    number of children drawn uniformly from ``branching[0] .. branching[1]`` (inclusive) until
    ``n_nodes`` nodes exist, so nodes are numbered in breadth-first order and every parent has a
    smaller index than its children. With the default branching (mean 4) a 1000-node tree has
    depth about 5-6 and a transitive closure of about 4-5 thousand pairs, the size of the
    WordNet mammal closure (1180 nodes, 6540 pairs).

    Args:
        n_nodes: number of nodes (at least 1).
        branching: ``(min, max)`` number of children of an expanded node, ``1 <= min <= max``.
        seed: seed of the private ``numpy.random.Generator`` (the global RNGs are untouched).

    Returns:
        ``n_nodes − 1`` edges ``(child, parent)``, in order of the child's index.
    """
    n_nodes = int(n_nodes)
    low, high = (int(b) for b in branching)
    if n_nodes < 1:
        raise ValueError(f"n_nodes must be at least 1, got {n_nodes}")
    if not 1 <= low <= high:
        raise ValueError(f"branching must satisfy 1 <= min <= max, got {branching}")
    rng = np.random.default_rng(int(seed))
    edges: list[tuple[int, int]] = []
    frontier = deque([0])
    next_node = 1
    while next_node < n_nodes:
        parent = frontier.popleft()
        children = int(rng.integers(low, high + 1))
        for _ in range(min(children, n_nodes - next_node)):
            edges.append((next_node, parent))
            frontier.append(next_node)
            next_node += 1
    return edges


def transitive_closure(edges: EdgeLike) -> Tensor:
    """All ``(descendant, ancestor)`` pairs of a hierarchy given by its ``(child, parent)`` edges.

    Works for any directed acyclic graph (a node may have several parents, as in WordNet);
    repeated pairs appear once and self-loops are ignored. For a tree the closure has one pair
    per (node, proper ancestor), i.e. as many pairs as the sum of the nodes' depths.

    Args:
        edges: ``(child, parent)`` pairs, a sequence or an integer array/tensor of shape
            ``(E, 2)``.

    Returns:
        An int64 tensor of shape ``(P, 2)``, sorted by descendant, then ancestor.

    Raises:
        ValueError: if the edges contain a cycle.
    """
    tensor = _as_edges(edges)
    parents: dict[int, set[int]] = {}
    for child, parent in tensor.tolist():
        if child != parent:
            parents.setdefault(child, set()).add(parent)
    ancestors: dict[int, frozenset[int]] = {}
    for start in sorted(parents):
        if start in ancestors:
            continue
        # iterative post-order DFS over parents; "on_path" detects cycles
        stack: list[tuple[int, bool]] = [(start, False)]
        on_path: set[int] = set()
        while stack:
            node, expanded = stack.pop()
            if expanded:
                on_path.discard(node)
                result: set[int] = set()
                for parent in parents.get(node, ()):
                    result.add(parent)
                    result |= ancestors[parent]
                ancestors[node] = frozenset(result)
                continue
            if node in ancestors:
                continue
            if node in on_path:
                raise ValueError(f"the edges contain a cycle through node {node}")
            on_path.add(node)
            stack.append((node, True))
            for parent in parents.get(node, ()):
                if parent in on_path:
                    raise ValueError(f"the edges contain a cycle through node {parent}")
                if parent not in ancestors:
                    stack.append((parent, False))
    pairs = sorted((node, a) for node, found in ancestors.items() for a in found)
    if not pairs:
        return torch.empty(0, 2, dtype=torch.int64)
    return torch.tensor(pairs, dtype=torch.int64)


def load_closure_csv(
    path: str | Path, *, keep_self_loops: bool = False
) -> tuple[Tensor, list[str]]:
    """Read a transitive-closure CSV in the format of facebookresearch/poincare-embeddings.

    The format of ``wordnet/mammal_closure.csv`` (made by the reference repository's
    ``wordnet/transitive_closure.py``): a header ``id1,id2,weight`` and one row per hypernymy pair
    ``(hyponym, hypernym)`` of node names. As in the reference loader (``load_edge_list``), rows
    with an empty field are dropped and node indices are given in order of first appearance when
    the pairs are read row by row (``id1`` before ``id2``). The ``weight`` column is optional
    and ignored. Nothing is downloaded: the file must exist locally.

    Args:
        path: the CSV file.
        keep_self_loops: keep rows with ``id1 == id2`` (dropped by default: a node is not its
            own neighbour, and a zero distance has no useful gradient).

    Returns:
        ``(edges, names)``: int64 ``(descendant, ancestor)`` index pairs of shape ``(E, 2)`` and
        the node names, ``names[i]`` being the name of node ``i``.

    Raises:
        ValueError: if the header lacks ``id1`` or ``id2``.
    """
    index: dict[str, int] = {}
    names: list[str] = []
    pairs: list[tuple[int, int]] = []

    def node(name: str) -> int:
        if name not in index:
            index[name] = len(names)
            names.append(name)
        return index[name]

    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields = [name.strip() for name in reader.fieldnames or []]
        if "id1" not in fields or "id2" not in fields:
            raise ValueError(f"{path}: expected a header with id1,id2[,weight], got {fields}")
        reader.fieldnames = fields
        for row in reader:
            first, second = (row.get("id1") or "").strip(), (row.get("id2") or "").strip()
            if not first or not second:
                continue
            if first == second and not keep_self_loops:
                continue
            pairs.append((node(first), node(second)))
    edges = torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2)
    return edges, names


class _Adjacency:
    """Sorted neighbour lists (CSR) of a graph, undirected or as given, self-loops dropped.

    Attributes:
        n_nodes: number of nodes.
        keys: sorted unique ``u * n_nodes + v`` of the (directed) adjacency pairs.
        indptr: ``(n_nodes + 1,)``; the neighbours of ``u`` are ``indices[indptr[u]:indptr[u+1]]``.
        indices: neighbour indices, sorted within each node.
        degree: ``(n_nodes,)`` number of neighbours.
    """

    def __init__(self, edges: Tensor, n_nodes: int, symmetric: bool = True) -> None:
        edges = edges[edges[:, 0] != edges[:, 1]]
        if symmetric:
            edges = torch.cat([edges, edges.flip(1)])
        self.n_nodes = n_nodes
        self.keys = torch.unique(edges[:, 0] * n_nodes + edges[:, 1])  # sorted
        source = torch.div(self.keys, n_nodes, rounding_mode="floor")
        self.indices = self.keys - source * n_nodes
        self.degree = torch.bincount(source, minlength=n_nodes)
        self.indptr = torch.zeros(n_nodes + 1, dtype=torch.int64)
        self.indptr[1:] = torch.cumsum(self.degree, 0)

    def contains(self, rows: Tensor, columns: Tensor) -> Tensor:
        """Elementwise whether ``(rows[i], columns[i])`` is an adjacency pair."""
        if self.keys.numel() == 0:
            return torch.zeros(rows.shape, dtype=torch.bool)
        query = rows * self.n_nodes + columns
        position = torch.searchsorted(self.keys, query).clamp_(max=self.keys.numel() - 1)
        return self.keys[position] == query

    def neighbours(self, node: int) -> Tensor:
        """The sorted neighbours of ``node``."""
        return self.indices[int(self.indptr[node]) : int(self.indptr[node + 1])]

    def label_rows(self, rows: Tensor) -> Tensor:
        """A boolean ``(len(rows), n_nodes)`` matrix: ``[i, v]`` is whether ``v ~ rows[i]``."""
        labels = torch.zeros(rows.numel(), self.n_nodes, dtype=torch.bool)
        counts = self.degree[rows]
        starts = self.indptr[rows]
        row_index = torch.repeat_interleave(torch.arange(rows.numel()), counts)
        offsets = torch.arange(int(counts.sum())) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts
        )
        labels[row_index, self.indices[torch.repeat_interleave(starts, counts) + offsets]] = True
        return labels


# --------------------------------------------------------------------------------------------
# Model, loss, negative sampling
# --------------------------------------------------------------------------------------------


class PoincareEmbedding(nn.Module):
    """A table of ``n_nodes`` points of the Poincaré ball, scored by negative distances.

    The weight is a :class:`~torchvalley.ManifoldParameter` of shape ``(n_nodes, dim)`` on
    ``PoincareBall(c)``, initialised uniformly in ``[−init_range, init_range]`` per coordinate
    (Nickel & Kiela: points start near the origin).

    Args:
        n_nodes: number of embedded nodes.
        dim: dimension of the ball.
        init_range: half-width of the uniform initialisation.
        seed: seed of a private ``torch.Generator`` for the initialisation; ``None`` draws from
            the global torch RNG (what :meth:`Task.model`, which seeds it, relies on).
        dtype: parameter dtype (float64 by default: see the module docstring).
        c: negated curvature of the ball.
    """

    def __init__(
        self,
        n_nodes: int,
        dim: int = 5,
        *,
        init_range: float = 1e-3,
        seed: int | None = None,
        dtype: torch.dtype = torch.float64,
        c: float = 1.0,
    ) -> None:
        super().__init__()
        if n_nodes < 1 or dim < 1:
            raise ValueError(f"need n_nodes >= 1 and dim >= 1, got {n_nodes} and {dim}")
        if not (math.isfinite(init_range) and init_range > 0):
            raise ValueError(f"init_range must be a finite positive float, got {init_range!r}")
        self.manifold = PoincareBall(c)
        generator = None if seed is None else torch.Generator().manual_seed(int(seed))
        data = (torch.rand(n_nodes, dim, generator=generator, dtype=dtype) * 2 - 1) * init_range
        self.weight = ManifoldParameter(data, self.manifold)

    @property
    def n_nodes(self) -> int:
        """Number of embedded nodes."""
        return self.weight.shape[0]

    @property
    def dim(self) -> int:
        """Dimension of the ball."""
        return self.weight.shape[1]

    def forward(self, idx: Tensor) -> Tensor:
        """Logits: minus the distances from ``idx[:, 0]`` to each of ``idx[:, 1:]``.

        Args:
            idx: int64 node indices of shape ``(B, 1 + M)``; for training ``M = 1 + K``: column
                0 is ``u``, column 1 the positive ``v`` and columns ``2..`` the ``K`` negatives.

        Returns:
            ``−d(u, ·)`` of shape ``(B, M)`` (the positive, if any, in column 0).
        """
        points = self.weight[idx]
        return -self.manifold.dist(points[:, :1], points[:, 1:])

    def extra_repr(self) -> str:
        return f"n_nodes={self.n_nodes}, dim={self.dim}, c={self.manifold.c}"


def poincare_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """Nickel & Kiela's softmax loss, averaged over the positive pairs.

    With class-index targets (shape ``(B,)``; ``0`` for training rows) this is exactly
    ``F.cross_entropy(outputs, targets)``. With a boolean (or 0/1) label matrix of the shape of
    ``outputs`` each row may hold several positives: every positive ``p`` of a row is scored
    against all the row's negatives, ``−s_p + log(e^{s_p} + Σ_neg e^{s_n})``, and the mean is over
    all positives of all rows (the loss with the full set of non-neighbours as negatives, when
    the row holds all the other nodes).

    Args:
        outputs: logits (negative distances) of shape ``(B, M)``.
        targets: ``(B,)`` column of the positive, or ``(B, M)`` labels.

    Returns:
        The scalar loss.
    """
    if targets.ndim == 1:
        return F.cross_entropy(outputs, targets)
    labels = targets.to(torch.bool)
    negatives = torch.logsumexp(outputs.masked_fill(labels, -math.inf), dim=1, keepdim=True)
    per_entry = torch.logaddexp(outputs, negatives) - outputs
    return per_entry[labels].mean()


class NegativeSampler:
    """Draws ``K`` negatives ``v'`` for a node ``u``: nodes neither related to ``u`` nor ``u``.

    "Related" is adjacency in the closure taken as undirected (ancestors and descendants of
    ``u``), as in Nickel & Kiela's ``N(u) = {v' : (u, v') ∉ D}`` with ``D`` symmetrised. Negatives
    are drawn with replacement, either uniformly over the allowed nodes or, during the burn-in,
    with probability ∝ ``degree(v')^power`` (``power = 0.75``, the reference code's unigram
    table; ``degree`` is the undirected degree in the closure). Sampling is by rejection against
    a sorted table of adjacency keys (vectorized); entries still rejected after ``max_rounds``
    rounds are drawn exactly from the allowed set, so the distribution is exact.

    Args:
        edges: the closure pairs, shape ``(E, 2)``.
        n_nodes: number of nodes (default: ``1 + max index``).
        num_negatives: ``K``.
        seed: seed of the private ``torch.Generator``.
        power: exponent of the degree weighting.
        max_rounds: rejection rounds before the exact fallback.
    """

    def __init__(
        self,
        edges: EdgeLike,
        n_nodes: int | None = None,
        num_negatives: int = 10,
        *,
        seed: int = 0,
        power: float = 0.75,
        max_rounds: int = 50,
    ) -> None:
        tensor = _as_edges(edges, n_nodes)
        self.n_nodes = _n_nodes(tensor, n_nodes)
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be at least 1, got {num_negatives}")
        self.num_negatives = int(num_negatives)
        self.power = float(power)
        self.max_rounds = int(max_rounds)
        self.adjacency = _Adjacency(tensor, self.n_nodes, symmetric=True)
        self.degree = self.adjacency.degree
        self.weights = self.degree.to(torch.float64) ** self.power
        #: number of valid negatives of each node (all nodes but itself and its neighbours)
        self.allowed = self.n_nodes - 1 - self.degree
        self.generator = torch.Generator().manual_seed(int(seed))

    def _draw(self, count: int, weighted: bool) -> Tensor:
        if weighted:
            return torch.multinomial(
                self.weights, count, replacement=True, generator=self.generator
            )
        return torch.randint(0, self.n_nodes, (count,), generator=self.generator)

    def _rejected(self, rows: Tensor, candidates: Tensor) -> Tensor:
        return (rows == candidates) | self.adjacency.contains(rows, candidates)

    def _exact(self, node: int, count: int, weighted: bool) -> Tensor:
        mask = torch.ones(self.n_nodes, dtype=torch.bool)
        mask[self.adjacency.neighbours(node)] = False
        mask[node] = False
        weights = self.weights * mask if weighted else mask.to(torch.float64)
        if float(weights.sum()) <= 0:  # only zero-degree nodes are allowed: uniform over them
            weights = mask.to(torch.float64)
        return torch.multinomial(weights, count, replacement=True, generator=self.generator)

    def sample(self, nodes: Tensor, weighted: bool = False) -> Tensor:
        """``K`` negatives for each node of ``nodes``.

        Args:
            nodes: int64 node indices of shape ``(B,)``.
            weighted: draw ∝ ``degree^power`` (burn-in) instead of uniformly.

        Returns:
            int64 negatives of shape ``(B, K)``.

        Raises:
            ValueError: if a node is related to every other node (it has no negatives).
        """
        nodes = torch.as_tensor(nodes, dtype=torch.int64).reshape(-1)
        if nodes.numel() and bool((self.allowed[nodes] == 0).any()):
            bad = int(nodes[self.allowed[nodes] == 0][0])
            raise ValueError(f"node {bad} is related to every other node: it has no negatives")
        rows = nodes.repeat_interleave(self.num_negatives)
        out = self._draw(rows.numel(), weighted)
        pending = torch.nonzero(self._rejected(rows, out)).reshape(-1)
        for _ in range(self.max_rounds):
            if pending.numel() == 0:
                break
            out[pending] = self._draw(pending.numel(), weighted)
            pending = pending[self._rejected(rows[pending], out[pending])]
        if pending.numel():
            for node in torch.unique(rows[pending]).tolist():
                where = pending[rows[pending] == node]
                out[where] = self._exact(node, where.numel(), weighted)
        return out.reshape(-1, self.num_negatives)

    def batch(self, pairs: Tensor, weighted: bool = False) -> Tensor:
        """Training indices ``[u, v, v'_1, …, v'_K]`` for positive pairs ``(u, v)``.

        Args:
            pairs: int64 ``(B, 2)`` positive pairs.
            weighted: as in :meth:`sample`.

        Returns:
            int64 indices of shape ``(B, 2 + K)``, the input of :class:`PoincareEmbedding`.
        """
        return torch.cat([pairs, self.sample(pairs[:, 0], weighted)], dim=1)

    def state_dict(self) -> dict[str, Any]:
        """The generator state (and the settings it goes with)."""
        return {
            "generator": self.generator.get_state(),
            "num_negatives": self.num_negatives,
            "power": self.power,
            "n_nodes": self.n_nodes,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the generator state saved by :meth:`state_dict`."""
        for key in ("num_negatives", "n_nodes"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"state has {key}={state[key]}, sampler has {getattr(self, key)}")
        self.generator.set_state(state["generator"])


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def average_precision(scores: Tensor, labels: Tensor) -> Tensor:
    """Average precision of ranking ``labels`` by ``scores`` (higher first), row by row.

    The same number as ``sklearn.metrics.average_precision_score(labels, scores)`` for each row,
    ties included: AP = Σ_t (R_t − R_{t−1}) P_t over the distinct score thresholds ``t``, so tied
    entries share the precision at the end of their group.

    Args:
        scores: ``(..., n)`` scores.
        labels: ``(..., n)`` booleans (or 0/1), the positives.

    Returns:
        float64 ``(...)`` average precisions; NaN for rows without a positive.
    """
    scores = scores.detach()
    n = scores.shape[-1]
    sorted_scores, order = torch.sort(scores, dim=-1, descending=True, stable=True)
    hits = torch.gather(labels.to(torch.float64), -1, order)
    precision = hits.cumsum(-1) / torch.arange(1, n + 1, dtype=torch.float64)
    is_end = torch.ones_like(sorted_scores, dtype=torch.bool)
    is_end[..., :-1] = sorted_scores[..., :-1] != sorted_scores[..., 1:]
    position = torch.arange(n).expand(sorted_scores.shape)
    # index of the end of each entry's tie group: reversed running minimum of the group ends
    ends = torch.where(is_end, position, torch.full_like(position, n))
    group_end = torch.cummin(ends.flip(-1), dim=-1).values.flip(-1)
    return (hits * torch.gather(precision, -1, group_end)).sum(-1) / hits.sum(-1)


def reconstruction_metrics(
    embedding_weights: Tensor,
    edges: EdgeLike,
    manifold: Manifold | None = None,
    *,
    symmetric: bool = True,
    chunk_size: int = 256,
) -> dict[str, float]:
    """Mean rank and MAP of the reconstruction of a graph from its embedding.

    As ``reconstruction_worker`` in ``hype/graph.py`` of facebookresearch/poincare-embeddings,
    vectorized: for every node ``u`` with at least one neighbour ``N(u)`` (the closure as an
    undirected graph by default), the distances from ``u`` to all other nodes (``u`` itself
    excluded) rank the nodes. For each true neighbour ``v``, ``rank = 1 +`` the number of
    non-neighbours strictly closer to ``u`` than ``v`` (other neighbours do not count; ties
    count in ``v``'s favour); the mean rank is over all pairs ``(u, v)``. The MAP is the mean
    over the nodes ``u`` of the average precision (:func:`average_precision`, equal to
    scikit-learn's) of ranking neighbours against non-neighbours by ``−d(u, ·)``.

    Args:
        embedding_weights: ``(n_nodes, dim)`` points.
        edges: the graph's pairs (e.g. the transitive closure), ``(E, 2)``.
        manifold: supplies ``dist``; default ``PoincareBall()``.
        symmetric: neighbours are related nodes in either direction (default). ``False``:
            only ``edges[:, 1]`` of the rows ``edges[:, 0] == u`` (e.g. a node's ancestors).
        chunk_size: nodes per block of distances (memory ``chunk_size × n_nodes × dim``).

    Returns:
        ``{"mean_rank", "map", "nodes", "pairs"}``: the two metrics and how many nodes and
        pairs they average over.
    """
    weights = embedding_weights.detach()
    n_nodes = weights.shape[0]
    adjacency = _Adjacency(_as_edges(edges, n_nodes), n_nodes, symmetric=symmetric)
    manifold = PoincareBall() if manifold is None else manifold
    objects = torch.nonzero(adjacency.degree > 0).reshape(-1)
    rank_sum = 0.0
    pairs = 0
    ap_sum = 0.0
    with torch.no_grad():
        for rows in torch.split(objects, max(int(chunk_size), 1)):
            distances = manifold.dist(weights[rows, None, :], weights[None, :, :])
            distances[torch.arange(rows.numel()), rows] = math.inf
            labels = adjacency.label_rows(rows)
            negatives = distances.masked_fill(labels, math.inf).sort(dim=1).values
            closer = torch.searchsorted(negatives, distances.contiguous(), side="left")
            rank_sum += float((closer + 1)[labels].sum())
            pairs += int(labels.sum())
            ap_sum += float(average_precision(-distances, labels).sum())
    nodes = objects.numel()
    return {
        "mean_rank": rank_sum / pairs if pairs else math.nan,
        "map": ap_sum / nodes if nodes else math.nan,
        "nodes": float(nodes),
        "pairs": float(pairs),
    }


def ranking_map(outputs: Tensor, targets: Tensor) -> float:
    """Mean over rows of the average precision of the positives among the row's candidates.

    The metric of the ``poincare_tree`` task. With a ``(B, n − 1)`` label matrix over all other
    nodes (the task's test set) it is exactly the reconstruction MAP of
    :func:`reconstruction_metrics`; with class-index targets ``(B,)`` (training rows: the
    positive in column 0 among ``K`` sampled negatives) it is the mean reciprocal rank of the
    positive among its negatives.

    Args:
        outputs: scores (negative distances) of shape ``(B, M)``.
        targets: ``(B,)`` positive columns or ``(B, M)`` labels.

    Returns:
        The mean average precision, in ``[0, 1]``.
    """
    outputs = outputs.detach()
    if targets.ndim == 1:
        labels = torch.zeros(outputs.shape, dtype=torch.bool)
        labels[torch.arange(outputs.shape[0]), targets.long()] = True
    else:
        labels = targets.to(torch.bool)
    values = average_precision(outputs, labels)
    return float(values[~torch.isnan(values)].mean())
