#!/usr/bin/env bash
# The paper-scale experiment (configs/smollm2-gpu-paper-scale.yaml) on the GPU machine, in calls
# of at most BUDGET_S seconds, resumable across calls and sessions.
#
# Here, once: python scripts/gpu_carry.py prepare     (SmolLM2's GGUF in parts + the gguf wheel)
# Device call 1: carry [".gpu_carry/smollm2/part-1"]
#                command  bash scripts/gpu_experiment.sh receive
# Device call 2, at once (the machine keeps call 1's ignored files while warm):
#                carry [".gpu_carry/smollm2/part-2", ".gpu_carry/smollm2/index.json",
#                       ".gpu_carry/wheels", ".gpu_carry/state"]
#                command  BUDGET_S=450 OUT=$OUT bash scripts/gpu_experiment.sh run
# Then here: mkdir -p .gpu_carry/state && cp <files_at>/state.tar.gz .gpu_carry/state/ (the next
# call resumes from it) and commit what benchmarks/results/ received.
#
# `run` joins and checks the model, installs the gguf wheel offline when `gguf` is missing, runs
# `corp experiment` until done or out of time (SIGINT, then SIGKILL 20 s later: the search log
# loses at most the members in flight), and always packs the experiment's state into
# $OUT/state.tar.gz (< 16 MiB) with the log. On a machine without CUDA, CONFIG=<a small config>
# checks the script itself (tests/test_gpu_experiment_script.py).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CONFIG=${CONFIG:-configs/smollm2-gpu-paper-scale.yaml}
BUDGET_S=${BUDGET_S:-450}
OUT=${OUT:-$PWD/gpu_out}
CARRY=.gpu_carry
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

case "${1:-}" in
  receive)
    ls -l "$CARRY"/smollm2/ 2>&1
    exit 0 ;;
  run) ;;
  *) echo "usage: $0 receive|run" >&2; exit 2 ;;
esac

mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_experiment.log") 2>&1
START=$(date +%s)
status=0
if grep -q "builtin:smollm2" "$CONFIG" && [ -z "${CORP_SMOLLM2_GGUF:-}" ]; then
  "$PY" scripts/gpu_carry.py join "$CARRY/SmolLM2-135M-Instruct.Q4_1.gguf" || exit 1
  export CORP_SMOLLM2_GGUF=$PWD/$CARRY/SmolLM2-135M-Instruct.Q4_1.gguf
  "$PY" -c "import gguf" 2>/dev/null || "$PY" -m pip install -q --no-index --no-deps \
    "$CARRY"/wheels/gguf-*.whl || exit 1
fi
output_dir=$("$PY" -c "import yaml, sys; print(yaml.safe_load(open(sys.argv[1]))['output_dir'])" "$CONFIG")
results=$("$PY" -c "import yaml, sys; c = yaml.safe_load(open(sys.argv[1])); print(c.get('results_dir', 'benchmarks/results') + '/' + c.get('experiment_name', 'experiment'))" "$CONFIG")
if [ -f "$CARRY/state/state.tar.gz" ]; then
  echo "== resuming from $CARRY/state/state.tar.gz"
  tar -xzf "$CARRY/state/state.tar.gz" || status=1
fi
left=$(( BUDGET_S - ($(date +%s) - START) - 30 ))
echo "== corp experiment --config $CONFIG for at most ${left}s"
timeout -s INT -k 20 "$left" "$PY" -m corp experiment --config "$CONFIG"
rc=$?
case $rc in
  0) echo "== experiment finished" ;;
  124|130|137) echo "== out of time: packed for the next call" ;;
  *) echo "!! corp experiment failed (rc $rc)"; status=1 ;;
esac
# the state the next call needs, and the results the experiment wrote (the search log's lock file
# is left out: it names this machine's process)
tar --exclude='*.lock' -czf "$OUT/state.tar.gz" "$output_dir" $(ls -d "$results"* 2>/dev/null) \
  || status=1
ls -l "$OUT"
exit $status
