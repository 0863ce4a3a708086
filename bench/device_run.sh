#!/usr/bin/env bash
# bench/gpu.py on a lent GPU machine, as ONE call of the `device` tool (issue 16). The machine has python3 with
# torch, transformers, safetensors, accelerate and opencv, but no diffusers and no internet, so the wheels travel
# in `.whl/` (ignored by git; 20 MB: transformers 5.23 too, the machine has 5.17). Prepare them here once:
#
#   .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 \
#       transformers==5.23.0 regex==2026.11.19
#
# then call the device tool's `run` with command `bash bench/device_run.sh`, carry [".whl"], timeout_s 560.
# Stages run most important first, each under its own time limit, and each writes its figures to $OUT as soon as it
# has them, so a run cut short still returns what it measured. A session has 15 minutes of device time, a machine's
# start takes 1-2 of them: this is sized to end in about 9 minutes.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out/device}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "device_run: the carried wheels did not install (is .whl/ carried?)"; exit 2; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"

stage() {  # stage NAME SECONDS ARGS...: one bench/gpu.py run, its log and JSON in $OUT
    local name=$1 seconds=$2
    shift 2
    echo "== $name (at most ${seconds}s)"
    timeout --signal=INT --kill-after=15 "$seconds" python3 bench/gpu.py --out /tmp/bench-out --json "$OUT/$name.json" "$@" \
        2>&1 | grep -v -e "it/s]" -e "Warning" -e "deprecate" | tee "$OUT/$name.log" | grep -e "^|" -e "lowvram in" -e "Error" -e "GPU:"
    echo "== $name: exit ${PIPESTATUS[0]}"
}

# 1. SD1.5 512², fp16: every variant (two compiles: --compile and CUDA graphs) and lowvram in 2 GB.
stage sd15-fp16 270 --families sd15 --dtypes fp16 --steps 20 --repeats 3
# 2. SDXL 1024², fp16: no compiles (each takes minutes on SDXL's UNet), lowvram in 4 GB.
stage sdxl-fp16 200 --families sdxl --dtypes fp16 --steps 20 --repeats 2 --modes diffusers default medvram lowvram fp8
# 3. bf16, what time is left: the default against diffusers' on both.
stage bf16 70 --families sd15 sdxl --dtypes bf16 --steps 20 --repeats 2 --modes diffusers default --no-budget-check
