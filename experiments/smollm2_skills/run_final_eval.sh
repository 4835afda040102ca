#!/usr/bin/env bash
# Full-eval-split accuracy (bfloat16 scoring, all 985 eval items per model), the CMA-ES knee first,
# then the models it must beat (task arithmetic, the arithmetic expert, TIES, the reasoning expert),
# the base and the other knees: the order of importance when time runs short. Run from the
# repository root after run_searches.sh; output in logs/final_eval_full.out.
set -uo pipefail
HERE=experiments/smollm2_skills
# one at a time on 2 cores (and one writer of results/accuracy_*.json): a second call exits at once
exec 9> /tmp/evomerge_smollm2_final_eval.lock
flock -n 9 || { echo "run_final_eval.sh is already running (lock /tmp/evomerge_smollm2_final_eval.lock)"; exit 1; }
export EVOMERGE_THREADS=2
stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }
for opt in cma nsga2 random; do
  evomerge export runs/smollm2_skills_$opt --knee --out runs/smollm2_skills_$opt/knee.yaml --force -q
done
stamp "cma knee"
nice -n 5 python $HERE/baselines.py --dtype bfloat16 --recipe cma_knee=runs/smollm2_skills_cma/knee.yaml
stamp "task arithmetic"
nice -n 5 python $HERE/baselines.py --dtype bfloat16 --only task_arithmetic
stamp "arithmetic expert"
nice -n 5 python $HERE/evaluate.py --dtype bfloat16 --models arithmetic
stamp "ties"
nice -n 5 python $HERE/baselines.py --dtype bfloat16 --only ties
stamp "reasoning expert and base"
nice -n 5 python $HERE/evaluate.py --dtype bfloat16 --models reasoning base
stamp "other knees"
nice -n 5 python $HERE/baselines.py --dtype bfloat16 --recipe nsga2_knee=runs/smollm2_skills_nsga2/knee.yaml \
  --recipe random_knee=runs/smollm2_skills_random/knee.yaml
stamp "done"
