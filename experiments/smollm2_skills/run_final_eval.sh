#!/usr/bin/env bash
# Full-eval-split accuracy (bfloat16 scoring) of each search's knee, the untuned baselines, the
# experts and the base. Run from the repository root after run_searches.sh.
set -uo pipefail
HERE=experiments/smollm2_skills
export EVOMERGE_THREADS=2
recipes=()
for opt in cma nsga2 random; do
  evomerge export runs/smollm2_skills_$opt --knee --out runs/smollm2_skills_$opt/knee.yaml --force \
    && recipes+=(--recipe "${opt}_knee=runs/smollm2_skills_$opt/knee.yaml")
done
nice -n 5 python $HERE/baselines.py --dtype bfloat16 "${recipes[@]}"
nice -n 5 python $HERE/baselines.py --dtype bfloat16
nice -n 5 python $HERE/evaluate.py --dtype bfloat16 --models arithmetic reasoning base
