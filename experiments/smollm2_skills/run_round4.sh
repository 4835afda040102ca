#!/usr/bin/env bash
# Round 4 end to end, one step after another (2 cores): the calibration (the base, the three experts
# and 16 space-filling merges on the eval split, bfloat16); the nine searches (CMA-ES, NSGA-II,
# random x seeds 0-2, 1000 items each, promotion on); the untuned baselines and each search's
# incumbent (exported) scored on the test split, each distinct model once; the experts' test scores;
# the summary.
# ROUND4_DTYPE (default float32): the dtype of the test-split scoring (the searches' is in their
# configs); float32 on a CPU without bfloat16 units, where bfloat16 scores ~5x slower.
# Run from the repository root: bash experiments/smollm2_skills/run_round4.sh [STEP...]
# STEP: calibration, searches, picks, experts, summary (default: all five, in this order).
# ROUND_DEADLINE (epoch seconds): searches not started by then are skipped (the picks step takes
# the runs there are).
set -uo pipefail
# ROUND (default 4): round 5 runs search_OPT_round5.yaml into RUNS/round5_OPT_sSEED (6000 items each).
# RUNS: where the runs live: runs/ (ignored) for round 4; from round 5 $HERE/round5_runs, committed
# after each search, so a session that ends mid-search leaves a run the next one resumes.
ROUND=${ROUND:-4}
HERE=experiments/smollm2_skills
RUNS=${RUNS:-$([ "$ROUND" -ge 5 ] && echo $HERE/round${ROUND}_runs || echo runs)}
export EVOMERGE_THREADS=2
ROOT=${EVOMERGE_SMOLLM2_ROOT:-$HOME/.cache/evomerge/smollm2_skills}
steps=${*:-calibration searches picks experts summary}
DTYPE=${ROUND4_DTYPE:-float32}
TAG=$([ "$DTYPE" = float32 ] && echo test || echo test-$DTYPE)
stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }
for step in $steps; do
  case $step in
    calibration)
      stamp "calibration"
      mkdir -p runs/round4_calibration_answers
      evomerge calibrate fitness/skills.yaml --subjects $ROOT/base $ROOT/arithmetic $ROOT/reasoning $ROOT/logic \
        --space $HERE/space_ties3_groups.yaml --merges 16 --dtype bfloat16 --batch-size 16 \
        --answers runs/round4_calibration_answers --out $HERE/results/calibration_round4.json \
        > $HERE/logs/calibration_round4.out 2>&1
      ;;
    experts)
      stamp "experts on the test split"
      python $HERE/evaluate.py --split test --dtype $DTYPE --models arithmetic reasoning logic
      ;;
    searches)
      for seed in 0 1 2; do
        for opt in cma nsga2 random; do
          name=round${ROUND}_${opt}_s$seed
          if [ -n "${ROUND_DEADLINE:-}" ] && [ "$(date +%s)" -ge "$ROUND_DEADLINE" ]; then
            stamp "search $name: not started (past ROUND_DEADLINE)"; continue
          fi
          if [ -f $RUNS/$name/run.json ] && grep -q "search $name: rc=0" $HERE/logs/search_$name.out 2>/dev/null; then
            stamp "search $name: finished before"; continue
          fi
          [ -f $RUNS/$name/run.json ] && resume=--resume || resume=
          start=$(date +%s)
          OMP_NUM_THREADS=1 nice -n 5 evomerge search $HERE/search_${opt}_round${ROUND}.yaml --seed $seed \
            --run-dir $RUNS/$name $resume > $HERE/logs/search_$name.out 2>&1
          stamp "search $name: rc=$? wall $(( $(date +%s) - start )) s" | tee -a $HERE/logs/search_$name.out
        done
      done
      ;;
    picks)
      recipes=()
      for seed in 0 1 2; do
        for opt in cma nsga2 random; do
          name=round${ROUND}_${opt}_s$seed
          [ -d $RUNS/$name ] || continue
          evomerge export $RUNS/$name --incumbent --out $RUNS/$name/incumbent.yaml --force -q &&
            recipes+=(--recipe $name=$RUNS/$name/incumbent.yaml)
        done
      done
      stamp "picks: ${recipes[*]}"
      python $HERE/baselines.py --split test --dtype $DTYPE --experts arithmetic reasoning logic \
        --baselines --suffix 3 "${recipes[@]}"
      ;;
    summary)
      python $HERE/round4.py --runs $RUNS --prefix round$ROUND --out round${ROUND}_summary.json --tag $TAG \
        --reference-tag test-bfloat16 --print
      ;;
  esac
done
stamp done
