#!/usr/bin/env bash
# The two-spirals comparison of docs/results/langevin.md (Leimkuhler, Matthews & Vlaar 2019, AdLaLa):
# 2-100-1 ReLU MLP, batch 25, the task's default 1000 epochs (the paper ran 4000), 5 seeds,
# 1 thread per run. AdLaLa/LaLa/LOL use the paper's hyperparameters (h=0.25, gamma=0.1,
# tau=1e-4, sigma_A=0.01, eps=0.05, xi_0=0.1) and their model partition (the registry factory
# splits model.parameters() per layer: AdLaLa = adaptive first layer + Langevin output layer,
# LOL = Langevin first layer + overdamped output layer, LaLa = one Langevin group per layer).
# Usage: bash benchmarks/spirals.sh [a|b|report|all]
#   a, b: the two halves of the specs (run them in parallel: same store, disjoint runs);
#   report: the report (reports/spirals) and docs/figures/spirals_curves.png; all: a, b, report.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SEEDS="0 1 2 3 4"
STORE=results/spirals.db
LA=lr=0.25,friction=0.1,temperature=1e-4
AD=$LA,noise_scale=0.01,thermostat_coupling=0.05,thermostat_init=0.1
SPECS_A=(-o adlala:$AD -o lol:$LA -o sgld:lr=0.2,temperature=1e-4 -o sgd:lr=0.05,momentum=0.9)
SPECS_B=(-o lala:$LA -o baoab:$LA -o adam:lr=0.005)
what=${1:-all}
run() {
  $PY -m torchvalley bench --task spirals "$@" --seeds $SEEDS --threads 1 --no-progress \
    --store $STORE
}
if [[ $what == a || $what == all ]]; then run "${SPECS_A[@]}"; fi
if [[ $what == b || $what == all ]]; then run "${SPECS_B[@]}"; fi
if [[ $what == report || $what == all ]]; then
  $PY -m torchvalley report --store $STORE --out reports/spirals
fi
