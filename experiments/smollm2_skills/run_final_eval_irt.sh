#!/usr/bin/env bash
# Full-eval-split accuracy (bfloat16, all 985 eval items) of the knees of the gp-IRT searches
# (run_searches.sh _irt$SUFFIX) and, in round 3, of each search's trial with the best estimated
# mean over the tasks (`export --weights` with equal weights: the pick for the mean objective).
# Round 2 (SUFFIX ""): the parents, the base and the untuned baselines were scored on the same
# items before (results/accuracy_full-bfloat16.json; the experts rebuild bit-identically).
# Round 3 (SUFFIX 3) first scores the logic expert and the untuned baselines over the three
# experts (ties3, task_arithmetic3); round 3b (SUFFIX 3_a30) scores only its search's picks.
# Run from the repository root: bash experiments/smollm2_skills/run_final_eval_irt.sh [SUFFIX]
set -uo pipefail
HERE=experiments/smollm2_skills
SUFFIX=${1:-}
exec 9> /tmp/evomerge_smollm2_final_eval.lock
flock -n 9 || { echo "a final evaluation is already running (lock /tmp/evomerge_smollm2_final_eval.lock)"; exit 1; }
export EVOMERGE_THREADS=2
experts=(arithmetic reasoning)
[[ "$SUFFIX" == 3* ]] && experts+=(logic)
if [ "$SUFFIX" = 3 ]; then
  nice -n 5 python $HERE/evaluate.py --models logic --dtype bfloat16
  nice -n 5 python $HERE/baselines.py --dtype bfloat16 --experts "${experts[@]}" --suffix 3
fi
recipes=()
for opt in cma nsga2 random; do
  run=runs/smollm2_skills_${opt}_irt$SUFFIX
  [ -d "$run" ] || continue
  evomerge export $run --knee --out $run/knee.yaml --force -q && recipes+=(--recipe ${opt}_irt${SUFFIX}_knee=$run/knee.yaml)
  if [[ "$SUFFIX" == 3* ]]; then
    evomerge export $run --weights arithmetic=1,logic=1,dates=1 --out $run/best_mean.yaml --force -q &&
      recipes+=(--recipe ${opt}_irt${SUFFIX}_best=$run/best_mean.yaml)
  fi
done
echo "[$(date -u +%H:%M:%S)] ${recipes[*]}"
nice -n 5 python $HERE/baselines.py --dtype bfloat16 --experts "${experts[@]}" "${recipes[@]}"
echo "[$(date -u +%H:%M:%S)] done"
