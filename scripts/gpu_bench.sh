#!/usr/bin/env bash
# The GPU benchmark in one go, for a lent GPU machine (docs/performance.md, "GPU").
#
#   scripts/gpu_bench.sh [VIDEO [ARGS...]]
#
# Installs only what is missing, then runs `python -m bench.benchmark` (Django-free): the
# ceiling (fp16 matmul / FLOPs per image), the encoder alone at large batches, the engine's
# own path (one decoder thread) and N decoder processes feeding fp16 batches, end to end
# and decoding alone. JSON on stdout and in $OUT/gpu_bench.json (or ./gpu_bench.json).
#
# - torch: a CUDA build already there is used (its version is in the JSON); else
#   torch==2.14.1 torchvision==0.29.1 from the package index, as the Makefile pins them.
# - open_clip and its small pure-Python needs: from wheels in .gpu/wheels when present (a
#   machine without internet: `pip download` them here, carry .gpu), else from the index.
# - VIDEO: default .gpu/vtest.avi if carried, else ../shared/data/vtest.avi.
# - ARGS replace the defaults below; a dry run on a CPU with the tests' tiny model:
#   scripts/gpu_bench.sh VIDEO --model tiny.json --device cpu --precision fp32 \
#       --decoders 1,2 --batch-size 16 --encoder-batches 16 --loops 1 --matmul-sizes 128 \
#       --fit-on-device
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

if ! "$PY" -c 'import torch, torchvision' 2>/dev/null; then
    echo "installing torch 2.14.1 / torchvision 0.29.1" >&2
    "$PY" -m pip install -q torch==2.14.1 torchvision==0.29.1
fi
if ! "$PY" -c 'import open_clip' 2>/dev/null; then
    if compgen -G ".gpu/wheels/*.whl" >/dev/null; then
        echo "installing the carried wheels: $(ls .gpu/wheels | tr '\n' ' ')" >&2
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu-bench-site \
            .gpu/wheels/*.whl
        export PYTHONPATH=/tmp/gpu-bench-site${PYTHONPATH:+:$PYTHONPATH}
    else
        "$PY" -m pip install -q open_clip_torch
    fi
fi
# The engine runs from this checkout; Django and the rest of the project are not needed.
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

if [ $# -ge 1 ]; then
    VIDEO=$1
    shift
elif [ -f .gpu/vtest.avi ]; then
    VIDEO=.gpu/vtest.avi
else
    VIDEO=../shared/data/vtest.avi
fi
if [ $# -eq 0 ]; then
    CORES=$(nproc)
    set -- --decoders "1,$((CORES / 2)),$((CORES > 3 ? CORES - 2 : 1))" \
        --batch-size 256 --encoder-batches 64,256,1024 --loops 3 --fit-on-device
fi

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader >&2 || true
echo "$(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)" >&2
df -h /dev/shm >&2 || true  # the decoders' batches cross through shared memory
"$PY" -c 'import torch, cv2, open_clip; print("torch", torch.__version__, "cuda",
torch.cuda.is_available(), "opencv", cv2.__version__, "open_clip", open_clip.__version__)' >&2

RESULT=${OUT:-.}/gpu_bench.json
"$PY" -m bench.benchmark "$VIDEO" --pretrained none "$@" --json "$RESULT"
echo "JSON written to $RESULT" >&2
