#!/usr/bin/env bash
# The three searches at equal budgets, one after another (2 cores), each logged and timed.
# Run from the repository root: bash experiments/smollm2_skills/run_searches.sh [SUFFIX]
# SUFFIX picks the configs search_{cma,nsga2,random}SUFFIX.yaml: "" (anchor-mean fitness) or
# "_irt" (gp-IRT fitness from results/calibration_space.json), "_irt3" (round 3's three experts);
# OPTIMIZERS picks which of them run (default "cma nsga2 random"), e.g. OPTIMIZERS=nsga2 ... _irt3_a30.
set -uo pipefail
HERE=experiments/smollm2_skills
SUFFIX=${1:-}
for opt in ${OPTIMIZERS:-cma nsga2 random}; do
  name=$opt$SUFFIX
  start=$(date +%s)
  OMP_NUM_THREADS=1 nice -n 5 evomerge search $HERE/search_$name.yaml --run-dir runs/smollm2_skills_$name \
    > $HERE/logs/search_$name.out 2>&1
  echo "search $name: rc=$? wall $(( $(date +%s) - start )) s" | tee -a $HERE/logs/search_$name.out
done
