#!/usr/bin/env bash
# One prepared check of corp-kernels on a CUDA machine, in at most BUDGET_S seconds (default 470):
# builds the C++ and CUDA extensions in place, runs the kernel tests on CUDA (Triton compiled, the
# CUDA extension, torch on CUDA), the micro-benchmarks, the fused-vs-chunked table, the fused
# decode tiles against each other in CUDA-graph time, the end-to-end population-search throughput
# on a ~0.5B Llama and (last: what a short budget drops first) the benchmark suite in bf16.
#
# Runs on the GPU machine's own stack (python3 with torch+CUDA, triton, pytest-xdist; no network):
#     OUT=/some/dir bash scripts/gpu_check.sh
# Writes at most 8 files to $OUT (default ./gpu_out): env.txt build.log tests.log microbench.json
# search.json suite.json linear_rule.md gpu_check.log. Exit status: non-zero if any step failed.
# On a machine without CUDA it builds and runs the kernel tests (Triton interpreted), skips the
# GPU-only steps, and runs the search benchmark on a tiny model: a check of the script itself.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-470}
START=$(date +%s)
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/corp_triton_cache}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
unset CORP_KERNELS_REQUIRE_CPP
# a failed build is reported by its own step; the kernel tests still run on what did build
export CORP_KERNELS_ALLOW_MISSING=${CORP_KERNELS_ALLOW_MISSING:-cpp,cuda}
status=0
step() { echo "== $(date +%T) [+$(( $(date +%s) - START ))s] $*"; }
# Seconds a step may take: its own cap, or what is left of the budget (minus a margin).
cap() { local left=$(( BUDGET_S - ($(date +%s) - START) - 5 )); (( left < $1 )) && echo $(( left > 1 ? left : 1 )) || echo "$1"; }
fail() { echo "!! $*"; status=1; }

step "environment"
{ nvidia-smi -L 2>&1 || echo "nvidia-smi: none"; nvcc --version 2>&1 | tail -1
  "$PY" -c "import torch, triton, platform; print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__); p = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None; print(p.name, 'sm_%d%d' % (p.major, p.minor), p.multi_processor_count, 'SMs', round(p.total_memory / 2**30), 'GiB') if p else print('no CUDA device')"
  nproc
} >"$OUT/env.txt" 2>&1 || fail "environment"
cat "$OUT/env.txt"
CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))")
[ "$CUDA" = 1 ] || export TRITON_INTERPRET=1

step "build the C++ and CUDA extensions in place"
MAX_JOBS=$(nproc) TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} timeout "$(cap 200)" \
  "$PY" setup.py build_ext --inplace >"$OUT/build.log" 2>&1 || fail "build (see build.log)"
tail -2 "$OUT/build.log"
"$PY" -c "import corp_kernels as ck; [print(f'  {n:7s} {s.available!s:5s} {s.reason}') for n, s in ck.backends().items()]" \
  | tee -a "$OUT/env.txt" || fail "import corp_kernels"

step "kernel tests (on CUDA: Triton compiled, CUDA extension, torch on CUDA)"
workers=$([ "$CUDA" = 1 ] && echo 8 || echo 2)
xdist=$("$PY" -c "import xdist" 2>/dev/null && echo "-n $workers" || echo "")
timeout "$(cap 170)" "$PY" -m pytest -q $xdist -p no:cacheprovider --maxfail=30 \
  tests/test_philox.py tests/test_noise_ops.py tests/test_linear.py tests/test_noise_gram.py \
  tests/test_sketch.py tests/test_validation.py tests/test_integration.py >"$OUT/tests.log" 2>&1 \
  || fail "kernel tests (see tests.log)"
tail -3 "$OUT/tests.log"

if [ "$CUDA" = 1 ]; then
  step "micro-benchmarks, cross-backend ulps, opcheck/compile/graphs, JIT registers and spills"
  timeout "$(cap 120)" "$PY" -m benchmarks.gpu_microbench --quick --out "$OUT/microbench.json" \
    || fail "micro-benchmarks"

  step "perturbed_linear: fused vs chunked vs materialize, paired intervals (the Triton rule)"
  timeout "$(cap 60)" "$PY" -m benchmarks.bench_linear_rule --device cuda --repeats 11 \
    --output "$OUT/linear_rule.md" || fail "linear rule benchmark"

  step "fused decode tiles against each other, CUDA graphs (appended to linear_rule.md)"
  # no new row starts in the last 25 s of the step; the table is rewritten after every row
  c=$(cap 75)
  timeout "$c" "$PY" -m benchmarks.gpu_fused_tiles --budget-s $(( c > 35 ? c - 25 : 10 )) \
    --append --output "$OUT/linear_rule.md" || fail "fused tile benchmark"

  step "end-to-end population search on a ~0.5B Llama (64 prompts x 64 new tokens per member)"
  timeout "$(cap 150)" "$PY" -m benchmarks.bench_search_throughput --size 0.5b --members 3 \
    --population 8 16 --population-fused 16 --out "$OUT/search.json" || fail "search throughput"

  step "benchmark suite (bf16, quick)"
  timeout "$(cap 90)" "$PY" -m benchmarks.run --quick --device cuda --output "$OUT/suite.json" \
    || fail "benchmark suite"
else
  step "no CUDA device: micro-benchmarks and suite skipped; search benchmark on a tiny model"
  timeout "$(cap 120)" "$PY" -m benchmarks.bench_search_throughput --size tiny --device cpu \
    --prompts 4 --new-tokens 4 --members 2 --population 2 --population-fused 2 --out "$OUT/search.json" \
    || fail "search throughput (tiny, CPU)"
  timeout "$(cap 60)" "$PY" -m benchmarks.gpu_fused_tiles --output "$OUT/linear_rule.md" \
    || fail "fused tile benchmark (interpreter, CPU)"
fi

step "done: status $status"
ls -la "$OUT"
exit $status
