#!/usr/bin/env bash
# The accuracy comparison of docs/results/sam_variants.md: GSAM, WSAM, Friendly-SAM and SAM with
# gradient centralization against SGD and SAM on mnist1d_cnn, 5 seeds, 10 epochs, 1 thread.
# Usage: bash benchmarks/sam_variants_accuracy.sh   (stores in results/, report in reports/)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
B=base_optimizer=sgd,lr=0.05,momentum=0.9
$PY -m torchvalley bench --task mnist1d_cnn --epochs 10 \
  -o sgd:lr=0.05,momentum=0.9 -o sam:$B,rho=0.05 -o gsam:$B,rho=0.05,alpha=0.2 \
  -o wsam:$B,rho=0.05,gamma=0.9 -o friendly_sam:$B,rho=0.05,sigma=1.0,lmbda=0.9 \
  -o sam:$B,rho=0.05,gradient_centralization=True \
  --seeds 0 1 2 3 4 --threads 1 --no-progress --store results/sam_variants.db
$PY -m torchvalley report --store results/sam_variants.db --out reports/sam_variants
# bSAM (its own update, no base optimizer): N = 4000 training signals, two step sizes, 3 seeds.
$PY -m torchvalley bench --task mnist1d_cnn --epochs 10 \
  -o bsam:lr=0.1,num_data=4000,rho=0.01 -o bsam:lr=0.5,num_data=4000,rho=0.01 \
  --seeds 0 1 2 --threads 1 --no-progress --store results/sam_variants_bsam.db
$PY -m torchvalley report --store results/sam_variants_bsam.db --out reports/sam_variants_bsam
