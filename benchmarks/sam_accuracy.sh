#!/usr/bin/env bash
# The SAM-family accuracy measurements of docs/results/sam.md: a comparison at one rho per method
# on mnist1d_cnn and digits_cnn, and a rho sweep on mnist1d_cnn; 5 seeds, 1 thread per run.
# Usage: bash benchmarks/sam_accuracy.sh [compare|sweep|all]   (stores in results/, reports/)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
B=base_optimizer=sgd,lr=0.05,momentum=0.9
SEEDS="0 1 2 3 4"
what=${1:-all}
if [[ $what == compare || $what == all ]]; then
  for task in mnist1d_cnn digits_cnn; do
    $PY -m torchvalley bench --task $task \
      -o sgd:lr=0.05,momentum=0.9 -o sam:$B,rho=0.05 -o asam:$B,rho=0.5 \
      -o fisher_sam:$B,rho=0.1,fisher_eta=1.0 -o sam_on:$B,rho=0.5 -o monge_sam:$B,rho=0.05 \
      --seeds $SEEDS --threads 1 --no-progress --store results/sam_compare_v2.db
  done
  $PY -m torchvalley report --store results/sam_compare_v2.db --out reports/sam_compare_v2
fi
if [[ $what == sweep || $what == all ]]; then
  specs=(-o sgd:lr=0.05,momentum=0.9)
  for rho in 0.01 0.02 0.05 0.1 0.2 0.5 1.0 2.0; do specs+=(-o sam:$B,rho=$rho); done
  for rho in 0.05 0.1 0.2 0.5 1.0 2.0 5.0; do specs+=(-o sam_on:$B,rho=$rho); done
  for rho in 0.01 0.02 0.05 0.1 0.2 0.5 1.0 2.0; do specs+=(-o monge_sam:$B,rho=$rho); done
  $PY -m torchvalley bench --task mnist1d_cnn "${specs[@]}" \
    --seeds $SEEDS --threads 1 --no-progress --store results/sam_rho_sweep_v2.db
  $PY -m torchvalley report --store results/sam_rho_sweep_v2.db --out reports/sam_rho_sweep_v2
  $PY benchmarks/rho_sweep_plot.py --store results/sam_rho_sweep_v2.db --task mnist1d_cnn \
    --out docs/figures/rho_sweep_mnist1d_cnn.png
fi
