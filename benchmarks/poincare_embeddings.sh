#!/usr/bin/env bash
# The Poincaré-embedding measurement of docs/results.md: RSGD vs RAdam vs RAMSGrad vs RAdagrad
# on the transitive closure of a generated 1000-node tree (dim 5, 50 negatives, batch 10,
# 10 burn-in epochs at lr/10), 100 epochs, seeds 0 1 2, 1 thread per process, two processes.
# Learning rates: the best of a 60-epoch scan on seed 0 (docs/results.md) and a neighbour.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
COMMON="--seeds 0 1 2 --epochs 100 --eval-every 10 --nodes 1000 --dim 5 --threads 1"
$PY benchmarks/poincare_embeddings.py $COMMON \
  --optimizers "rsgd:lr=1.0" "rsgd:lr=0.3" "radam:lazy=True,lr=0.003" "radam:lazy=True,lr=0.01" "radam:lr=0.01" \
  --out results/poincare_a.json --plot docs/figures/poincare_tree_a.png > results/poincare_a.md &
$PY benchmarks/poincare_embeddings.py $COMMON \
  --optimizers "ramsgrad:lazy=True,lr=0.01" "ramsgrad:lazy=True,lr=0.03" "radagrad:lr=0.1" "radagrad:lr=0.3" \
  --out results/poincare_b.json --plot docs/figures/poincare_tree_b.png > results/poincare_b.md &
wait
cat results/poincare_a.md results/poincare_b.md
