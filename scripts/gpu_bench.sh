#!/usr/bin/env bash
# The GPU benchmark in one go, for a lent GPU machine (docs/performance.md, "GPU").
#
#   scripts/gpu_bench.sh --prepare [VIDEO]   # here, with the package index: fills .gpu/
#   scripts/gpu_bench.sh [VIDEO [ARGS...]]   # there: installs what is missing, measures
#
# Runs `python -m bench.benchmark` (Django-free): the ceiling (fp16 matmul / FLOPs per
# image), the encoder alone at large batches, the engine's own path (one decoder thread),
# then each feed at a few decoder counts, decoding alone and end to end (ViT-B-16, fp16 on
# a GPU): "dataloader" (decoder processes, a DataLoader), "ring" (decoder processes writing
# into a shared ring of frame slots, bench/ring.py), both with the resize in the decoders
# and on the device, and "torchcodec" (decoder threads, NVDEC on a GPU, resize on the
# device). A second run does the ring and torchcodec on an H.264 copy of the video (NVDEC
# does not decode vtest.avi's MS-MPEG4 v3; cameras send H.264). Each run's table is printed
# at the end; JSON in $OUT/gpu_bench.json and $OUT/gpu_bench_h264.json (or ./), the log in
# $OUT/gpu_bench.log.
#
# - --prepare (on this machine, before the GPU run): downloads into .gpu/wheels open_clip,
#   ftfy, wcwidth and torchcodec 0.17.0 for the GPU image's Python (GPU_PYTHON_VERSION,
#   default 3.12), copies VIDEO to .gpu/vtest.avi and writes .gpu/vtest_h264.mp4 (PyAV's
#   libx264). The GPU machine reaches no package index: .gpu travels with the working tree
#   (keep it out of commits).
# - torch: a CUDA build already there is used (its version is in the JSON); else
#   torch==2.14.1 torchvision==0.29.1 from the package index, as the Makefile pins them.
# - open_clip, torchcodec: from the wheels in .gpu/wheels when missing (each wheel that does
#   not fit this Python is skipped), else from the index. torchcodec loads the machine's
#   FFmpeg (4 to 9) shared libraries; without them the torchcodec feed is left out, said so
#   in one line, and the rest runs.
# - VIDEO: default .gpu/vtest.avi if carried, else ../shared/data/vtest.avi; H264: default
#   .gpu/vtest_h264.mp4 (the second run is skipped when it is absent).
# - ARGS replace the defaults below; a dry run on a CPU with the tests' tiny model:
#   scripts/gpu_bench.sh VIDEO --model tiny.json --device cpu --precision fp32 \
#       --decoders 1,2 --batch-size 16 --encoder-batches 16 --loops 1 --matmul-sizes 128 \
#       --fit-on-device
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${PYTHON:-}" ] && [ "${1:-}" = --prepare ] && [ -x .venv/bin/python ]; then
    PYTHON=.venv/bin/python # preparing needs the project's environment (PyAV, OpenCV)
fi
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

if [ "${1:-}" = --prepare ]; then
    SRC=${2:-../shared/data/vtest.avi}
    GPU_PY=${GPU_PYTHON_VERSION:-3.12}
    version() { "$PY" -m pip show "$1" 2>/dev/null | awk '/^Version:/ {print $2}'; }
    mkdir -p .gpu/wheels
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$GPU_PY" \
        --platform manylinux_2_28_x86_64 -d .gpu/wheels \
        "open_clip_torch==$(version open_clip_torch)" "ftfy==$(version ftfy)" \
        "wcwidth==$(version wcwidth)" torchcodec==0.17.0
    install -m 0644 "$SRC" .gpu/vtest.avi
    PYTHONPATH=$PWD "$PY" -m bench.benchmark .gpu/vtest.avi --make-h264 .gpu/vtest_h264.mp4
    ls -l .gpu .gpu/wheels
    du -sh .gpu
    exit 0
fi

if ! "$PY" -c 'import torch, torchvision' 2>/dev/null; then
    echo "installing torch 2.14.1 / torchvision 0.29.1" >&2
    "$PY" -m pip install -q torch==2.14.1 torchvision==0.29.1
fi
if ! "$PY" -c 'import open_clip, torchcodec' 2>/dev/null; then
    if compgen -G ".gpu/wheels/*.whl" >/dev/null; then
        for wheel in .gpu/wheels/*.whl; do
            "$PY" -m pip install -q --no-index --no-deps --no-compile \
                --target /tmp/gpu-bench-site "$wheel" 2>/dev/null ||
                echo "skipped $wheel (not for this Python or platform)" >&2
        done
        echo "installed the carried wheels: $(ls /tmp/gpu-bench-site | tr '\n' ' ')" >&2
        export PYTHONPATH=/tmp/gpu-bench-site${PYTHONPATH:+:$PYTHONPATH}
    else
        "$PY" -c 'import open_clip' 2>/dev/null || "$PY" -m pip install -q open_clip_torch
        "$PY" -m pip install -q torchcodec==0.17.0 || echo "torchcodec not installed" >&2
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
H264=${H264:-.gpu/vtest_h264.mp4}
if [ $# -eq 0 ]; then
    CORES=$(nproc)
    set -- --decoders "$((CORES / 2)),$((CORES > 3 ? CORES - 2 : 1))" \
        --batch-size 256 --encoder-batches 256,1024 --loops 2 --fit-on-device
fi

RESULTS=${OUT:-.}
LOG=$RESULTS/gpu_bench.log
rm -f "$RESULTS/gpu_bench.json" "$RESULTS/gpu_bench_h264.json" # no stale tables below
: >"$LOG"
note() { echo "$*" | tee -a "$LOG" >&2; }

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader 2>&1 | tee -a "$LOG" >&2 || true
note "$(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
df -h /dev/shm 2>&1 | tee -a "$LOG" >&2 || true # the DataLoader's batches cross through it
# NVDEC needs the driver's libnvcuvid (a container shows it only with the "video" capability).
note "libnvcuvid: $(ls /usr/local/nvidia/lib64/libnvcuvid* /usr/lib/x86_64-linux-gnu/libnvcuvid* \
    2>/dev/null | tr '\n' ' ' || true)"
"$PY" -c 'import torch, cv2, open_clip; print("torch", torch.__version__, "cuda",
torch.cuda.is_available(), "opencv", cv2.__version__, "open_clip", open_clip.__version__)' \
    2>&1 | tee -a "$LOG" >&2

FEEDS=dataloader,ring
if WHY=$("$PY" -c 'import sys
from bench import gpu as b
try:
    b.torchcodec_decoder()
except b.TorchcodecUnavailable as exc:
    sys.exit(str(exc))
import torchcodec
print("torchcodec", torchcodec.__version__)' 2>&1); then
    FEEDS=$FEEDS,torchcodec
    note "$WHY"
else
    note "the torchcodec feed is left out: $(echo "$WHY" | tail -1)"
fi

# JSON goes to the files (stdout would push the tables out of view); progress to the log.
bench() { "$PY" -m bench.benchmark "$@" 2>&1 >/dev/null | tee -a "$LOG" >&2; }

note "== $VIDEO: feeds $FEEDS; $*"
bench "$VIDEO" --pretrained none --feeds "$FEEDS" "$@" --json "$RESULTS/gpu_bench.json" ||
    note "the run on $VIDEO failed (exit $?)"
if [ -f "$H264" ]; then
    # The encoder was measured above; here only what decoding H.264 changes.
    note "== $H264 (H.264): feeds ${FEEDS#dataloader,}; $*"
    bench "$H264" --pretrained none --feeds "${FEEDS#dataloader,}" "$@" --encoder-batches "" \
        --json "$RESULTS/gpu_bench_h264.json" || note "the run on $H264 failed (exit $?)"
else
    note "no $H264: the H.264 run is skipped (scripts/gpu_bench.sh --prepare makes it)"
fi

for json in "$RESULTS/gpu_bench.json" "$RESULTS/gpu_bench_h264.json"; do
    [ -f "$json" ] || continue
    echo
    echo "== $json"
    "$PY" -c 'import json, sys
from bench.gpu import format_throughput
print(format_throughput(json.load(open(sys.argv[1]))))' "$json" | tee -a "$LOG"
done
