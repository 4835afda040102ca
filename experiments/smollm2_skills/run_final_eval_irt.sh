#!/usr/bin/env bash
# Full-eval-split accuracy (bfloat16, all 985 eval items) of the knees of the gp-IRT searches
# (run_searches.sh _irt). The parents, the base and the untuned baselines were scored on the same
# items before (results/accuracy_full-bfloat16.json; the experts rebuild bit-identically).
# Run from the repository root; output in logs/final_eval_full_irt.out.
set -uo pipefail
HERE=experiments/smollm2_skills
exec 9> /tmp/evomerge_smollm2_final_eval.lock
flock -n 9 || { echo "a final evaluation is already running (lock /tmp/evomerge_smollm2_final_eval.lock)"; exit 1; }
export EVOMERGE_THREADS=2
recipes=()
for opt in cma nsga2 random; do
  run=runs/smollm2_skills_${opt}_irt
  [ -d "$run" ] || continue
  evomerge export $run --knee --out $run/knee.yaml --force -q && recipes+=(--recipe ${opt}_irt_knee=$run/knee.yaml)
done
echo "[$(date -u +%H:%M:%S)] ${recipes[*]}"
nice -n 5 python $HERE/baselines.py --dtype bfloat16 "${recipes[@]}"
echo "[$(date -u +%H:%M:%S)] done"
