#!/usr/bin/env bash
# The IRT calibration of the searches' fitness: the base, the two experts and N space-filling TIES
# merges of space_ties_groups.yaml (a scrambled Latin hypercube), every one scored on all 985 eval
# items in bfloat16; each subject's answers are kept as scored (runs/smollm2_calibration_answers),
# so a stopped run resumes. Run from the repository root; output in logs/calibration_space.out.
set -uo pipefail
HERE=experiments/smollm2_skills
ROOT=${EVOMERGE_SMOLLM2_ROOT:-$HOME/.cache/evomerge/smollm2_skills}
MERGES=${1:-20}
start=$(date +%s)
nice -n 5 evomerge calibrate fitness/skills.yaml --subjects $ROOT/base $ROOT/arithmetic $ROOT/reasoning \
  --space $HERE/space_ties_groups.yaml --merges "$MERGES" --dtype bfloat16 --batch-size 16 \
  --answers runs/smollm2_calibration_answers --out $HERE/results/calibration_space.json \
  > $HERE/logs/calibration_space.out 2>&1
echo "calibrate: rc=$? wall $(( $(date +%s) - start )) s" | tee -a $HERE/logs/calibration_space.out
