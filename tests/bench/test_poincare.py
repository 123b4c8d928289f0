"""Poincaré-embedding benchmark: data, sampler, metrics, harness task; the script's training loop.

``train_poincare`` lives in ``benchmarks/poincare_embeddings.py`` (out of the library); its tests
load the script as a module.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import torchvalley
from torchvalley.bench import poincare
from torchvalley.bench.poincare import (
    NegativeSampler,
    PoincareEmbedding,
    average_precision,
    load_closure_csv,
    poincare_loss,
    random_tree,
    ranking_map,
    reconstruction_metrics,
    transitive_closure,
)
from torchvalley.bench.tasks import get_task
from torchvalley.manifolds import PoincareBall

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "poincare_embeddings.py"


@pytest.fixture(scope="module")
def script() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("poincare_embeddings_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # tiny ops: one intra-op thread is fastest and avoids oversubscribing a shared machine
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class HandRSGD(torch.optim.Optimizer):
    """Riemannian SGD written out: p ← projx(p − lr · egrad2rgrad(p, g)); records its lrs."""

    def __init__(self, params, lr: float = 0.3) -> None:
        super().__init__(params, {"lr": lr})
        self.lrs: list[float] = []

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self.lrs.append(group["lr"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                manifold = p.manifold
                p.copy_(manifold.projx(p - group["lr"] * manifold.egrad2rgrad(p, p.grad)))
        return loss


def _depths(edges: list[tuple[int, int]]) -> dict[int, int]:
    parent = dict(edges)
    depth = {0: 0}
    for child in sorted(parent):  # parents have smaller indices
        depth[child] = depth[parent[child]] + 1
    return depth


def _neighbour_sets(closure: torch.Tensor, n: int) -> list[set[int]]:
    sets: list[set[int]] = [set() for _ in range(n)]
    for a, b in closure.tolist():
        sets[a].add(b)
        sets[b].add(a)
    return sets


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def test_random_tree_is_a_deterministic_tree() -> None:
    before = torch.get_rng_state()
    state = np.random.get_state()
    edges = random_tree(500, (2, 6), seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    assert np.array_equal(np.random.get_state()[1], state[1])
    assert edges == random_tree(500, (2, 6), seed=3)
    assert edges != random_tree(500, (2, 6), seed=4)
    assert len(edges) == 499
    children = [c for c, _ in edges]
    assert sorted(children) == list(range(1, 500))  # one parent per non-root node
    assert all(p < c for c, p in edges)  # so every node reaches the root: connected
    counts = np.bincount([p for _, p in edges], minlength=500)
    internal = counts[counts > 0]
    assert internal[:-1].min() >= 2 and internal.max() <= 6  # the last parent may be cut short
    assert random_tree(1) == []
    with pytest.raises(ValueError, match="branching"):
        random_tree(10, (0, 2))


def test_closure_size_is_the_sum_of_depths() -> None:
    edges = random_tree(300, (2, 4), seed=1)
    closure = transitive_closure(edges)
    depth = _depths(edges)
    assert closure.shape == (sum(depth.values()), 2)
    assert closure.dtype == torch.int64
    assert len({tuple(p) for p in closure.tolist()}) == closure.shape[0]
    # every pair is (descendant, proper ancestor)
    parent = dict(edges)
    for node, ancestor in closure[::17].tolist():
        walk = node
        while walk != ancestor:
            walk = parent[walk]
    # a DAG with a shared ancestor counts it once; a cycle is refused
    dag = transitive_closure([(3, 1), (3, 2), (1, 0), (2, 0), (3, 3)])
    assert dag.tolist() == [[1, 0], [2, 0], [3, 0], [3, 1], [3, 2]]
    with pytest.raises(ValueError, match="cycle"):
        transitive_closure([(0, 1), (1, 2), (2, 0)])


def test_closure_csv_round_trip(tmp_path: Path) -> None:
    closure = transitive_closure(random_tree(40, seed=2))
    names = [f"node_{i}.n.01" for i in range(40)]
    path = tmp_path / "closure.csv"
    rows = ["id1,id2,weight"] + [f"{names[a]},{names[b]},1" for a, b in closure.tolist()]
    rows += ["mammal.n.01,mammal.n.01,1", "broken.n.01,,1"]  # a self-loop and an empty field
    path.write_text("\n".join(rows) + "\n")
    edges, loaded = load_closure_csv(path)
    assert edges.shape == closure.shape and edges.dtype == torch.int64
    assert [(loaded[a], loaded[b]) for a, b in edges.tolist()] == [
        (names[a], names[b]) for a, b in closure.tolist()
    ]
    # first-appearance order, id1 before id2
    assert loaded[:2] == [names[closure[0, 0]], names[closure[0, 1]]]
    with_loops, loaded_loops = load_closure_csv(path, keep_self_loops=True)
    assert with_loops.shape[0] == closure.shape[0] + 1 and loaded_loops[-1] == "mammal.n.01"
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\nx,y\n")
    with pytest.raises(ValueError, match="id1"):
        load_closure_csv(bad)


# --------------------------------------------------------------------------------------------
# Negative sampling
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_rounds", [50, 0])  # rejection, and the exact fallback
@pytest.mark.parametrize("weighted", [False, True])
def test_sampler_never_returns_a_neighbour(weighted: bool, max_rounds: int) -> None:
    n = 200
    closure = transitive_closure(random_tree(n, (2, 4), seed=0))
    neighbours = _neighbour_sets(closure, n)
    sampler = NegativeSampler(closure, n, 20, seed=1, max_rounds=max_rounds)
    nodes = torch.arange(1, n).repeat(5)
    drawn = sampler.sample(nodes, weighted=weighted)
    assert drawn.shape == (nodes.numel(), 20)
    for u, row in zip(nodes.tolist(), drawn.tolist(), strict=True):
        assert u not in row
        assert not neighbours[u].intersection(row)
    batch = sampler.batch(closure[:7], weighted=weighted)
    assert batch.shape == (7, 22) and torch.equal(batch[:, :2], closure[:7])


@pytest.mark.parametrize("weighted", [False, True])
def test_sampler_frequencies(weighted: bool) -> None:
    n = 120
    closure = transitive_closure(random_tree(n, (2, 4), seed=5))
    neighbours = _neighbour_sets(closure, n)
    sampler = NegativeSampler(closure, n, 100, seed=2)
    u = n - 1  # a leaf: many allowed negatives
    draws = 2000
    counts = torch.bincount(
        sampler.sample(torch.full((draws,), u), weighted=weighted).reshape(-1), minlength=n
    )
    allowed = torch.ones(n, dtype=torch.bool)
    allowed[list(neighbours[u])] = False
    allowed[u] = False
    degree = torch.bincount(closure.reshape(-1), minlength=n).to(torch.float64)
    weights = degree**0.75 if weighted else torch.ones(n, dtype=torch.float64)
    p = weights * allowed / (weights * allowed).sum()
    total = draws * 100
    frequency = counts.to(torch.float64) / total
    standard_error = (p * (1 - p) / total).sqrt()
    assert counts[~allowed].sum() == 0
    assert bool(((frequency - p).abs() <= 5 * standard_error + 1e-12).all())


def test_sampler_state_is_deterministic() -> None:
    closure = transitive_closure(random_tree(80, seed=0))
    before = torch.get_rng_state()
    first = NegativeSampler(closure, 80, 10, seed=7)
    second = NegativeSampler(closure, 80, 10, seed=7)
    nodes = closure[:, 0]
    assert torch.equal(first.sample(nodes), second.sample(nodes))
    state = first.state_dict()
    a = first.sample(nodes, weighted=True)
    b = first.sample(nodes)
    first.load_state_dict(state)
    assert torch.equal(first.sample(nodes, weighted=True), a)
    assert torch.equal(first.sample(nodes), b)
    assert not torch.equal(NegativeSampler(closure, 80, 10, seed=8).sample(nodes), a)
    assert torch.equal(torch.get_rng_state(), before)
    with pytest.raises(ValueError, match="num_negatives"):
        NegativeSampler(closure, 80, 5).load_state_dict(state)
    with pytest.raises(ValueError, match="no negatives"):
        first.sample(torch.tensor([0]))  # the root is related to every node


# --------------------------------------------------------------------------------------------
# Loss and metrics
# --------------------------------------------------------------------------------------------


def test_average_precision_matches_sklearn() -> None:
    from sklearn.metrics import average_precision_score

    generator = np.random.default_rng(0)
    scores = generator.standard_normal((30, 57))
    labels = generator.random((30, 57)) < 0.2
    labels[:, 0] = True
    tied = np.round(scores, 1)  # many ties
    for matrix in (scores, tied):
        ours = average_precision(torch.from_numpy(matrix), torch.from_numpy(labels))
        expected = [average_precision_score(y, s) for y, s in zip(labels, matrix, strict=True)]
        np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-12)


def test_loss_is_nickel_kiela_softmax() -> None:
    generator = torch.Generator().manual_seed(0)
    outputs = torch.randn(6, 11, generator=generator, dtype=torch.float64)
    zeros = torch.zeros(6, dtype=torch.int64)
    expected = F.cross_entropy(outputs, zeros)
    torch.testing.assert_close(poincare_loss(outputs, zeros), expected)
    one_hot = torch.zeros(6, 11, dtype=torch.bool)
    one_hot[:, 0] = True
    torch.testing.assert_close(poincare_loss(outputs, one_hot), expected)
    labels = one_hot.clone()
    labels[0, 3] = True  # two positives in row 0: each against the 9 negatives
    negatives = outputs[0, 1:].clone()
    negatives = torch.cat([negatives[:2], negatives[3:]])
    row0 = [
        torch.logsumexp(torch.cat([outputs[0, i : i + 1], negatives]), 0) - outputs[0, i]
        for i in (0, 3)
    ]
    rest = [F.cross_entropy(outputs[i : i + 1], zeros[:1]) for i in range(1, 6)]
    torch.testing.assert_close(poincare_loss(outputs, labels), torch.stack(row0 + rest).mean())


class _TableManifold:
    """A stand-in with ``dist`` read from a table; points are ``[[index]]``."""

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table

    def dist(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.table[x[..., 0].long(), y[..., 0].long()]


def test_perfect_embedding_has_mean_rank_one_and_map_one() -> None:
    n = 60
    closure = transitive_closure(random_tree(n, (2, 3), seed=0))
    labels = torch.zeros(n, n, dtype=torch.bool)
    labels[closure[:, 0], closure[:, 1]] = True
    labels |= labels.T.clone()
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand(n, n, generator=generator, dtype=torch.float64)
    table = torch.where(labels, noise, 2 + noise)  # every neighbour closer than any other
    points = torch.arange(n, dtype=torch.float64)[:, None]
    metrics = reconstruction_metrics(points, closure, _TableManifold(table), chunk_size=7)
    assert metrics["mean_rank"] == 1.0 and metrics["map"] == 1.0
    assert metrics["nodes"] == n and metrics["pairs"] == 2 * closure.shape[0]


def test_reconstruction_metrics_match_a_direct_implementation() -> None:
    from sklearn.metrics import average_precision_score

    n = 50
    closure = transitive_closure(random_tree(n, (2, 3), seed=4))
    ball = PoincareBall()
    weights = ball.random(n, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    neighbours = _neighbour_sets(closure, n)
    ranks, aps = [], []
    for u in range(n):
        d = ball.dist(weights[u], weights).numpy()
        others = [v for v in range(n) if v != u]
        non = [v for v in others if v not in neighbours[u]]
        for v in neighbours[u]:
            ranks.append(1 + sum(d[w] < d[v] for w in non))
        aps.append(average_precision_score([v in neighbours[u] for v in others], -d[others]))
    metrics = reconstruction_metrics(weights, closure, ball, chunk_size=16)
    assert metrics["mean_rank"] == pytest.approx(np.mean(ranks), abs=1e-12)
    assert metrics["map"] == pytest.approx(np.mean(aps), abs=1e-12)
    # directed: only the ancestors of each node are its neighbours
    directed = reconstruction_metrics(weights, closure, ball, symmetric=False)
    assert directed["pairs"] == closure.shape[0] and directed["nodes"] == n - 1


# --------------------------------------------------------------------------------------------
# Model and training
# --------------------------------------------------------------------------------------------


def test_embedding_forward() -> None:
    model = PoincareEmbedding(20, 4, seed=3)
    assert isinstance(model.weight, torchvalley.ManifoldParameter)
    assert model.weight.dtype == torch.float64
    assert float(model.weight.detach().abs().max()) <= 1e-3
    assert torch.equal(model.weight, PoincareEmbedding(20, 4, seed=3).weight)
    idx = torch.tensor([[0, 1, 2, 3], [5, 4, 3, 2]])
    logits = model(idx)
    expected = -model.manifold.dist(model.weight[idx[:, :1]], model.weight[idx[:, 1:]])
    assert logits.shape == (2, 3)
    torch.testing.assert_close(logits, expected)


def test_training_with_riemannian_sgd_learns_the_tree(script: ModuleType) -> None:
    closure = transitive_closure(random_tree(100, (2, 4), seed=0))
    created: list[HandRSGD] = []

    def factory(params, **kwargs):
        created.append(HandRSGD(params, **kwargs))
        return created[-1]

    seen: list[tuple[int, dict]] = []
    result = script.train_poincare(
        closure,
        100,
        optimizer=factory,
        optimizer_kwargs={"lr": 1.0},
        epochs=12,
        negatives=10,
        burnin_epochs=2,
        burnin_lr_factor=0.1,
        eval_every=6,
        seed=0,
        callback=lambda epoch, values: seen.append((epoch, dict(values))),
    )
    assert not result.diverged and len(result.losses) == 12
    assert result.losses[-1] < 0.6 * result.losses[0]
    assert result.eval_epochs == [0, 6, 12]
    assert result.maps[-1] > result.maps[0] + 0.3
    assert result.mean_ranks[-1] < result.mean_ranks[0] / 3
    assert float(result.weights.norm(dim=1).max()) < 1
    assert [epoch for epoch, _ in seen] == list(range(13))
    assert "map" in seen[6][1] and "map" not in seen[5][1] and "loss" not in seen[0][1]
    # burn-in learning rate: lr × factor for two epochs, restored afterwards
    steps_per_epoch = math.ceil(closure.shape[0] / 10)
    lrs = created[0].lrs
    assert lrs[: 2 * steps_per_epoch] == [pytest.approx(0.1)] * (2 * steps_per_epoch)
    assert set(lrs[2 * steps_per_epoch :]) == {1.0}
    assert created[0].param_groups[0]["lr"] == 1.0
    assert result.to_dict()["config"]["n_edges"] == closure.shape[0]


def test_training_is_deterministic_and_leaves_the_global_rng_alone(script: ModuleType) -> None:
    closure = transitive_closure(random_tree(40, seed=1))
    before = torch.get_rng_state()
    kwargs = {"optimizer": "sgd", "optimizer_kwargs": {"lr": 0.01}, "epochs": 2, "seed": 5}
    first = script.train_poincare(closure, burnin_epochs=1, **kwargs)
    second = script.train_poincare(closure, burnin_epochs=1, **kwargs)
    assert torch.equal(torch.get_rng_state(), before)
    assert first.losses == second.losses and torch.equal(first.weights, second.weights)
    assert first.eval_epochs == [2] and math.isfinite(first.final_map)
    other = script.train_poincare(closure, burnin_epochs=1, **{**kwargs, "seed": 6})
    assert other.losses != first.losses


def test_training_with_registered_rsgd(script: ModuleType) -> None:
    if "rsgd" not in torchvalley.list_optimizers():
        pytest.skip("the rsgd optimizer is not registered yet")
    closure = transitive_closure(random_tree(100, (2, 4), seed=0))
    result = script.train_poincare(
        closure, optimizer="rsgd", optimizer_kwargs={"lr": 1.0}, epochs=10, burnin_epochs=2
    )
    assert result.maps[-1] > 0.4 and float(result.weights.norm(dim=1).max()) < 1


# --------------------------------------------------------------------------------------------
# Harness task
# --------------------------------------------------------------------------------------------


def test_train_poincare_left_the_library() -> None:
    with pytest.raises(AttributeError, match=r"benchmarks/poincare_embeddings\.py"):
        poincare.train_poincare  # noqa: B018


def test_harness_task() -> None:
    task = get_task("poincare_tree")
    assert task.higher_is_better and task.metric_name == "map"
    from torchvalley.bench.tasks import poincare_tree

    # The task's pieces moved to the tasks package; the old names still resolve.
    assert poincare.load_tree_task is poincare_tree.load_tree_task
    data = poincare_tree.load_tree_task(0)
    closure = transitive_closure(random_tree(poincare.TASK_NODES, poincare.TASK_BRANCHING, seed=0))
    inputs, targets = data.train
    assert inputs.shape == (closure.shape[0], 2 + poincare.TASK_NEGATIVES)
    assert torch.equal(inputs[:, :2], closure) and not targets.any()
    assert torch.equal(poincare.load_tree_task(0).train[0], inputs)  # fixed per data seed
    model = task.model(0)
    assert torch.equal(model.weight, task.model(0).weight)
    test_inputs, test_targets = data.test
    n = poincare.TASK_NODES
    assert test_inputs.shape == (n, n) and test_targets.shape == (n, n - 1)
    with torch.no_grad():
        outputs = model(test_inputs)
        train_outputs = model(inputs)
    expected = reconstruction_metrics(model.weight, closure, model.manifold)["map"]
    assert ranking_map(outputs, test_targets) == pytest.approx(expected, abs=1e-12)
    assert math.isfinite(float(task.loss_fn(outputs, test_targets)))
    # training rows: the reciprocal rank of the positive among its negatives
    ranks = 1 + (train_outputs[:, 1:] >= train_outputs[:, :1]).sum(1)
    assert ranking_map(train_outputs, targets) == pytest.approx(float((1 / ranks).mean()))
    torch.testing.assert_close(
        task.loss_fn(train_outputs, targets), F.cross_entropy(train_outputs, targets)
    )


# --------------------------------------------------------------------------------------------
# Benchmark script
# --------------------------------------------------------------------------------------------


def test_script_mechanics(script: ModuleType, tmp_path: Path, capsys) -> None:
    out, plot = tmp_path / "runs.json", tmp_path / "fig" / "curves.png"
    argv = ["--smoke", "--optimizers", "sgd", "--lr", "sgd=0.01", "--out", str(out)]
    assert script.main([*argv, "--plot", str(plot), "--seeds", "0", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("| optimizer | lr | seeds | final loss | mean rank | MAP |")
    assert "| sgd | 0.01 | 2 |" in captured.out
    assert "does not honour ManifoldParameter" in captured.err
    payload = json.loads(out.read_text())
    assert len(payload["runs"]) == 2 and payload["runs"][0]["eval_epochs"] == [0, 2, 4]
    assert plot.stat().st_size > 1000


def test_script_smoke_with_rsgd(script: ModuleType, tmp_path: Path, capsys) -> None:
    if "rsgd" not in torchvalley.list_optimizers():
        pytest.skip("the rsgd optimizer is not registered yet")
    out = tmp_path / "runs.json"
    assert script.main(["--smoke", "--optimizers", "rsgd", "--out", str(out)]) == 0
    assert "| rsgd | 0.3 | 1 |" in capsys.readouterr().out
    assert json.loads(out.read_text())["runs"][0]["optimizer"] == "rsgd"
