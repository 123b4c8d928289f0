"""The ``kg_hierarchy`` link-prediction tasks: graph generator, filtered metrics, MuRP, harness."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from torchvalley.bench.runner import run_one
from torchvalley.bench.tasks import get_task, list_tasks
from torchvalley.bench.tasks.kg_hierarchy import (
    RELATIONS,
    TASK_ENTITIES,
    HyperbolicKGModel,
    filtered_mrr,
    filtered_ranks,
    hierarchy_graph,
    kg_loss,
    load_kg_task,
    query_targets,
    ranking_metrics,
)
from torchvalley.manifolds import Lorentz, PoincareBall

PARENT, CHILD, ANCESTOR, DESCENDANT, SIBLING = range(len(RELATIONS))


def _facts(tensor: torch.Tensor) -> set[tuple[int, int, int]]:
    return {tuple(row) for row in tensor.tolist()}


# ---------------------------------------------------------------------------------- metrics


def test_filtered_metrics_match_hand_computed_ranks():
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.5, 0.7, 0.3],  # answer 2; entity 0 filtered: only 3 scores higher
            [0.2, 0.2, 0.8, 0.1, 0.2],  # answer 0; 2 higher, 1 and 4 tied: 1 + 1 + 2/2 = 3
            [1.0, 2.0, 3.0, 4.0, 5.0],  # answer 4; entity 3 filtered: the top
        ]
    )
    targets = torch.tensor([[-1, 0, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, -1, 1]], dtype=torch.int8)
    assert filtered_ranks(scores, targets).tolist() == [2.0, 3.0, 1.0]
    metrics = ranking_metrics(scores, targets, ks=(1, 3, 10))
    assert metrics["mrr"] == pytest.approx((1 / 2 + 1 / 3 + 1) / 3)  # 11/18
    assert metrics["mr"] == pytest.approx(2.0)
    assert metrics["hits@1"] == pytest.approx(1 / 3)
    assert metrics["hits@3"] == pytest.approx(1.0)
    assert metrics["hits@10"] == pytest.approx(1.0)
    assert filtered_mrr(scores, targets) == pytest.approx(11 / 18)
    # Answer indices (1-D targets): raw ranks, nothing filtered: 3, 3, 1.
    answers = torch.tensor([2, 0, 4])
    assert filtered_ranks(scores, answers).tolist() == [3.0, 3.0, 1.0]
    assert filtered_mrr(scores, answers) == pytest.approx((1 / 3 + 1 / 3 + 1) / 3)
    # The loss is the cross-entropy of the answer, whatever the target form.
    expected = torch.nn.functional.cross_entropy(scores, answers)
    assert kg_loss(scores, targets) == pytest.approx(float(expected))
    assert kg_loss(scores, answers) == pytest.approx(float(expected))
    assert kg_loss(scores, targets, reduction="none").shape == (3,)


def test_query_targets_mark_answer_and_filtered_tails():
    known = torch.tensor([[0, 1, 2], [0, 1, 3], [0, 0, 4], [1, 1, 2]])
    facts = torch.tensor([[0, 1, 3], [1, 1, 2]])
    targets = query_targets(facts, known, n_entities=5)
    assert targets.tolist() == [[0, 0, -1, 1, 0], [0, 0, 1, 0, 0]]


def test_random_scores_give_the_expected_random_mrr():
    # Uniform random scores: the filtered rank is uniform on 1..m+1 (m competing entities), so
    # E[MRR] = H_{m+1}/(m+1). With 4000 rows the standard error of the mean of 1/rank is below
    # sd(1/rank)/sqrt(4000) <= 0.5/63 = 0.008; 4 standard errors: 0.032 (m = 9: E = 0.293).
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(4000, 10, generator=generator, dtype=torch.float64)
    targets = torch.zeros(4000, 10, dtype=torch.int8)
    targets[:, 0] = 1
    expected = sum(1 / k for k in range(1, 11)) / 10
    assert filtered_mrr(scores, targets) == pytest.approx(expected, abs=0.032)


# ---------------------------------------------------------------------------------- generator


def test_generator_is_deterministic_and_seeded():
    a, b = hierarchy_graph(seed=0), hierarchy_graph(seed=0)
    for name in ("train", "valid", "test", "tree"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    c = hierarchy_graph(seed=1)
    assert not torch.equal(a.test, c.test)


def test_held_out_facts_are_new_and_inferable_from_train():
    graph = hierarchy_graph(seed=0)
    train, valid, test = _facts(graph.train), _facts(graph.valid), _facts(graph.test)
    assert test and valid
    assert not test & train and not valid & train and not test & valid
    parent = {int(child): int(par) for child, par in graph.tree.tolist()}
    inverse = {ANCESTOR: DESCENDANT, DESCENDANT: ANCESTOR, SIBLING: SIBLING}
    for h, r, t in test | valid:
        assert r in (ANCESTOR, DESCENDANT, SIBLING)
        # no held-out fact is the inverse of a training fact (pairs are split as a whole)
        assert (t, inverse[r], h) not in train
        if r == SIBLING:
            p = parent[h]
            assert parent[t] == p and (p, PARENT, h) in train and (p, PARENT, t) in train
        else:
            ancestor, node = (h, t) if r == ANCESTOR else (t, h)
            hops = 0
            while node != ancestor:  # a chain of parent_of training facts
                assert (parent[node], PARENT, node) in train
                node, hops = parent[node], hops + 1
            assert hops >= 2
    # every tree edge is a training fact in both directions
    for child, par in graph.tree.tolist():
        assert (par, PARENT, child) in train and (child, CHILD, par) in train


def test_noise_corrupts_the_requested_share_of_multi_hop_training_facts():
    clean, noisy = hierarchy_graph(seed=0, noise=0.0), hierarchy_graph(seed=0, noise=0.2)
    assert torch.equal(clean.test, noisy.test) and torch.equal(clean.valid, noisy.valid)
    multi_hop = _facts(clean.train[clean.train[:, 1] >= ANCESTOR])
    corrupted = _facts(noisy.train[noisy.train[:, 1] >= ANCESTOR]) - multi_hop
    # Binomial(n, 0.2) count; 4 standard deviations sqrt(n 0.2 0.8) around n 0.2 (duplicates
    # of a sibling fact corrupted twice to the same tail are rare and fall inside the band).
    n = len(multi_hop)
    assert abs(len(corrupted) - 0.2 * n) <= 4 * math.sqrt(n * 0.16)
    held = _facts(clean.valid) | _facts(clean.test)
    assert not corrupted & held and all(h != t for h, _, t in corrupted)


# ---------------------------------------------------------------------------------- model


def _reference_scores(model: HyperbolicKGModel, queries: torch.Tensor) -> torch.Tensor:
    ball = PoincareBall(1.0)
    entities, translations = model.points()
    h = entities[queries[:, 0]]
    x = ball.expmap0(model.scale[queries[:, 1]] * ball.logmap(torch.zeros_like(h), h))
    tails = ball.mobius_add(entities[None], translations[queries[:, 1]][:, None])
    return -ball.dist(x[:, None], tails).square() + model.bias


def test_murp_scores_match_the_manifold_operations():
    torch.manual_seed(0)
    model = HyperbolicKGModel(40, len(RELATIONS), dim=4)

    def spread(n: int) -> torch.Tensor:
        # points over the ball up to norm 0.95 (nearer the boundary, the reference's artanh of
        # ‖−x ⊕ y‖ ≈ 1 loses digits that the model's arsinh form keeps)
        x = torch.randn(n, 4, dtype=torch.float64) * 0.6
        norm = x.norm(dim=1, keepdim=True)
        return x * (0.95 * torch.tanh(norm) / norm)

    with torch.no_grad():
        model.entities.copy_(spread(40))
        model.translations.copy_(spread(5))
        model.bias.normal_()
    queries = torch.stack([torch.arange(40), torch.arange(40) % 5], dim=1)
    torch.testing.assert_close(model(queries), _reference_scores(model, queries))


def test_lorentz_geometry_is_the_same_function_of_isometric_points():
    torch.manual_seed(3)
    poincare = HyperbolicKGModel(30, len(RELATIONS), dim=3)
    torch.manual_seed(3)
    lorentz = HyperbolicKGModel(30, len(RELATIONS), dim=3, geometry="lorentz")
    manifold = Lorentz(1.0)
    assert lorentz.entities.shape == (30, 4)
    assert manifold.check_point(lorentz.entities.detach())
    queries = torch.stack([torch.arange(30), torch.arange(30) % 5], dim=1)
    torch.testing.assert_close(lorentz(queries), poincare(queries))
    # the map onto the ball is an isometry: hyperboloid distances equal ball distances
    with torch.no_grad():
        lorentz.entities.copy_(manifold.random(30, 4, dtype=torch.float64))
    points = lorentz.points()[0]
    torch.testing.assert_close(
        manifold.dist(lorentz.entities[:-1], lorentz.entities[1:]),
        PoincareBall(1.0).dist(points[:-1], points[1:]),
    )


# ---------------------------------------------------------------------------------- harness


def test_tasks_are_registered_with_their_own_validation_split():
    for name in ("kg_hierarchy", "kg_hierarchy_lorentz"):
        assert name in list_tasks()
        task = get_task(name)
        assert task.metric_name == "mrr" and task.higher_is_better
        held_out = get_task(f"{name}@validation")
        data, validation = task.data(), held_out.data()
        assert torch.equal(data.train[0], validation.train[0])
        graph = hierarchy_graph(seed=0)
        assert data.test[0].shape == (graph.test.shape[0], 2)
        assert validation.test[0].shape == (graph.valid.shape[0], 2)
        assert data.train[1].shape == (graph.train.shape[0], TASK_ENTITIES)
        # every target row has exactly one answer, at the fact's tail
        answers = (data.test[1] == 1).nonzero()[:, 1]
        assert torch.equal(answers, graph.test[:, 2])


def _small_task():
    """The task on a 60-entity graph (a few hundred facts): a training run in a second."""
    base = get_task("kg_hierarchy")

    def load(data_seed: int):
        graph = hierarchy_graph(60, seed=data_seed)
        known = graph.known()
        return dataclasses.replace(
            load_kg_task(0),
            train=(graph.train[:, :2], query_targets(graph.train, known, 60)),
            test=(graph.test[:, :2], query_targets(graph.test, known, 60)),
        )

    return dataclasses.replace(
        base,
        name="kg_small",
        build_model=lambda: HyperbolicKGModel(60, len(RELATIONS), dim=4),
        load_data=load,
        batch_size=32,
    )


@pytest.mark.parametrize("spec", ["radam:lr=0.1", "lorentz_sam:base_optimizer=radam,lr=0.1"])
def test_short_training_run_learns(spec):
    task = _small_task()
    data = task.load_data(0)
    # Random scores: E[MRR] = mean over queries of H_{m+1}/(m+1), m the competing entities.
    competing = (data.test[1] == 0).sum(dim=1).double()
    chance = float(
        torch.tensor([sum(1 / k for k in range(1, int(m) + 2)) / (m + 1) for m in competing])
        .double()
        .mean()
    )
    result = run_one(task, spec, 0, epochs=6, progress=False, raise_errors=True)
    assert result.status == "finished"
    assert result.test_metric > chance + 0.15, (result.test_metric, chance)
