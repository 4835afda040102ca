#!/usr/bin/env bash
# The IRT calibration of the searches' fitness: the base, the space's experts and N space-filling
# TIES merges of space_ties${SUFFIX}_groups.yaml (a scrambled Latin hypercube), every one scored on
# all 985 eval items in bfloat16; each subject's answers are kept as scored
# (runs/smollm2_calibration_answers$SUFFIX), so a stopped run resumes.
# Run from the repository root: bash experiments/smollm2_skills/run_calibration.sh [MERGES] [SUFFIX]
#   round 2: MERGES=24, SUFFIX=""  (arithmetic + reasoning experts) -> results/calibration_space.json
#   round 3: MERGES=20, SUFFIX=3   (+ the logic expert)             -> results/calibration_space3.json
set -uo pipefail
HERE=experiments/smollm2_skills
ROOT=${EVOMERGE_SMOLLM2_ROOT:-$HOME/.cache/evomerge/smollm2_skills}
MERGES=${1:-20}
SUFFIX=${2:-}
experts=(arithmetic reasoning)
[ "$SUFFIX" = 3 ] && experts+=(logic)
answers=runs/smollm2_calibration_answers$SUFFIX
mkdir -p $answers
# The base's and the first experts' answers carry over from round 2 (their keys still match when
# the models are the same); the merges are named merge_NN in both rounds, so each round keeps its own.
[ -n "$SUFFIX" ] && cp -n runs/smollm2_calibration_answers/{base,arithmetic,reasoning}.json $answers/ 2>/dev/null
start=$(date +%s)
nice -n 5 evomerge calibrate fitness/skills.yaml --subjects $ROOT/base "${experts[@]/#/$ROOT/}" \
  --space $HERE/space_ties${SUFFIX}_groups.yaml --merges "$MERGES" --dtype bfloat16 --batch-size 16 \
  --answers $answers --out $HERE/results/calibration_space$SUFFIX.json \
  > $HERE/logs/calibration_space$SUFFIX.out 2>&1
echo "calibrate: rc=$? wall $(( $(date +%s) - start )) s" | tee -a $HERE/logs/calibration_space$SUFFIX.out
