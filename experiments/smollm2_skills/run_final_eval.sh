#!/usr/bin/env bash
# Full-eval-split accuracy (bfloat16 scoring, 985 items per model) of the base, the experts, the
# untuned baselines and each search's knee, in that order (the order of importance when time runs
# short). Run from the repository root after run_searches.sh; output in logs/final_eval.out.
set -uo pipefail
HERE=experiments/smollm2_skills
# one at a time on 2 cores (and one writer of results/accuracy_*.json): a second call exits at once
exec 9> /tmp/evomerge_smollm2_final_eval.lock
flock -n 9 || { echo "run_final_eval.sh is already running (lock /tmp/evomerge_smollm2_final_eval.lock)"; exit 1; }
export EVOMERGE_THREADS=2
stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }
stamp "base and experts"
nice -n 5 python $HERE/evaluate.py --dtype bfloat16 --models base arithmetic reasoning
stamp "baselines"
nice -n 5 python $HERE/baselines.py --dtype bfloat16
recipes=()
for opt in cma nsga2 random; do
  evomerge export runs/smollm2_skills_$opt --knee --out runs/smollm2_skills_$opt/knee.yaml --force \
    && recipes+=(--recipe "${opt}_knee=runs/smollm2_skills_$opt/knee.yaml")
done
stamp "knees"
nice -n 5 python $HERE/baselines.py --dtype bfloat16 "${recipes[@]}"
stamp "done"
