#!/usr/bin/env bash
# FG-SGD (fixed and learned radii, three constraints) vs SGD (same lr and momentum) on mnist1d_cnn and digits_cnn, 5 seeds, 1 thread per
# run: the measurement of docs/results/riemannian.md ("FG-SGD"). Stores in results/, reports in reports/.
# Usage: bash benchmarks/fgsgd_accuracy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SEEDS="0 1 2 3 4"
for task in mnist1d_cnn digits_cnn; do
  $PY -m torchvalley bench --task $task \
    -o sgd:lr=0.05,momentum=0.9 \
    -o sgd:lr=0.02,momentum=0.9 \
    -o sgd:lr=0.1,momentum=0.9 \
    -o fgsgd:lr=0.02,momentum=0.9 \
    -o fgsgd:lr=0.02,momentum=0.9,learn_radius=True \
    -o fgsgd:lr=0.05,momentum=0.9 \
    -o fgsgd:lr=0.05,momentum=0.9,constraint=oblique \
    -o fgsgd:lr=0.05,momentum=0.9,constraint=stiefel \
    -o fgsgd:lr=0.05,momentum=0.9,learn_radius=True \
    -o fgsgd:lr=0.2,momentum=0.9,learn_radius=True \
    --seeds $SEEDS --threads 1 --no-progress --store results/fgsgd_compare.db
done
$PY -m torchvalley report --store results/fgsgd_compare.db --out reports/fgsgd_compare
