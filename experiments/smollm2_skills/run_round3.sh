#!/usr/bin/env bash
# Round 3 end to end, one step after another (2 cores): the logic expert, the calibration over the
# three experts' space, the three gp-IRT searches, and the full-split evaluation of their knees.
# Run from the repository root: bash experiments/smollm2_skills/run_round3.sh
set -uo pipefail
HERE=experiments/smollm2_skills
EVOMERGE_THREADS=2 python $HERE/make_experts.py --only logic >> $HERE/logs/make_experts_logic.out 2>&1 || exit 1
bash $HERE/run_calibration.sh 20 3 || exit 1
bash $HERE/run_searches.sh _irt3
bash $HERE/run_final_eval_irt.sh 3 > $HERE/logs/final_eval_full_irt3.out 2>&1
