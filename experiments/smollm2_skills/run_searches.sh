#!/usr/bin/env bash
# The three searches at equal budgets, one after another (2 cores), each logged and timed.
# Run from the repository root: bash experiments/smollm2_skills/run_searches.sh
set -uo pipefail
HERE=experiments/smollm2_skills
for opt in cma nsga2 random; do
  start=$(date +%s)
  OMP_NUM_THREADS=1 nice -n 5 evomerge search $HERE/search_$opt.yaml --run-dir runs/smollm2_skills_$opt \
    > $HERE/logs/search_$opt.out 2>&1
  echo "search $opt: rc=$? wall $(( $(date +%s) - start )) s" | tee -a $HERE/logs/search_$opt.out
done
