#!/usr/bin/env bash
# The GPU measurements of issue 12, item 6, in one run of a few minutes on a CUDA machine:
#
#   1. environment (GPU, driver, torch);
#   2. ATen ops per layer vs batch, current loop-free proxy vs the old per-video loop (benchmarks/ops.py,
#      when present: counts dispatches, i.e. CUDA launches, without needing the GPU);
#   3. bf16 video-tower throughput (inference, bf16 autocast) at B/32 and B/16, largest batch that fits,
#      with fp32 and bf16-weights side by side (benchmarks/encode_files.py, tower section);
#   4. bf16 training step at B/32 and B/16, largest batch that fits (benchmarks/train_step.py);
#   5. torch.compile off / on for the B/32 bf16 training step at a fixed batch;
#   6. one short real training run (`clipvip train`, 2 steps, bf16, synthetic data) and `clipvip eval
#      --dtype auto` of its result on the GPU.
#
# Usage:  bash benchmarks/gpu.sh [OUT_DIR]        (default OUT_DIR: gpu-results-<UTC time>)
# Each step writes OUT_DIR/<step>.log; OUT_DIR/summary.txt lists every step's exit status and time, so a
# failed step does not hide the others. Without CUDA the script stops at once with exit status 2.
# Environment knobs: PYTHON (default python3), STEP_TIMEOUT seconds per step (default 240).

set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
STEP_TIMEOUT="${STEP_TIMEOUT:-240}"
OUT="${1:-gpu-results-$(date -u +%Y%m%dT%H%M%SZ)}"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "benchmarks/gpu.sh: no CUDA device visible to torch ($("$PY" -c 'import torch; print("torch", torch.__version__)' 2>&1 | tail -1)); these measurements need a GPU. Nothing was run." >&2
    exit 2
fi

mkdir -p "$OUT" || { echo "benchmarks/gpu.sh: cannot create $OUT" >&2; exit 1; }
OUT="$(cd "$OUT" && pwd)"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
cd "$ROOT" || exit 1

# run NAME CMD...: run one step under a timeout, log to OUT/NAME.log, record status and seconds.
run() {
    local name="$1"; shift
    local t0 rc
    t0=$(date +%s)
    echo "== $name: $*" | tee -a "$SUMMARY"
    { echo "\$ $*"; timeout "$STEP_TIMEOUT" "$@"; } > "$OUT/$name.log" 2>&1
    rc=$?
    [ "$rc" -eq 124 ] && echo "(killed after ${STEP_TIMEOUT}s)" >> "$OUT/$name.log"
    echo "   rc=$rc, $(( $(date +%s) - t0 )) s, log $OUT/$name.log" | tee -a "$SUMMARY"
    tail -n 25 "$OUT/$name.log"
    return "$rc"
}

{
    date -u +"date %FT%TZ"
    echo "git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "nvidia-smi unavailable"
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())'
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# 2. ops per layer (dispatch counter; each computing op is a launch on the GPU)
if [ -f benchmarks/ops.py ]; then
    # the loop-version baseline is read with `git show`; without the git history count the current code only
    run ops "$PY" benchmarks/ops.py --batches 1,8,32,128 ||
        run ops-current "$PY" benchmarks/ops.py --batches 1,8,32,128 --baseline none
else
    echo "== ops: benchmarks/ops.py not in this checkout; skipped" | tee -a "$SUMMARY"
fi

# 3. video tower, inference, bf16 autocast, largest batch (doubling from 32), fp32 and bf16 weights alongside
for arch in clipvip-b32 clipvip-b16; do
    run "tower-${arch#clipvip-}" "$PY" benchmarks/encode_files.py --device cuda --model "$arch" --skip files \
        --dtypes bf16 --tower-find-max-batch --tower-batch 32 --tower-max-batch 4096 --tower-repeats 3
done

# 4. training step, bf16, full 12-layer towers, largest batch (doubling from 16), proxy attention
for arch in clipvip-b32 clipvip-b16; do
    run "train-maxbatch-${arch#clipvip-}" "$PY" benchmarks/train_step.py --device cuda --dtype bf16 --arch "$arch" \
        --layers 0 --modes proxy --checkpointing off,on --find-max-batch --batch-size 16 --max-batch-cap 2048 \
        --steps 3 --warmup 1 --json "$OUT/train-maxbatch-${arch#clipvip-}.json"
done

# 5. torch.compile off / on, same batch (compilation happens in the untimed warm-up steps)
run compile-off "$PY" benchmarks/train_step.py --device cuda --dtype bf16 --arch clipvip-b32 --layers 0 \
    --modes proxy --checkpointing off --batch-size 128 --steps 5 --warmup 2 --json "$OUT/compile-off.json"
run compile-on "$PY" benchmarks/train_step.py --device cuda --dtype bf16 --arch clipvip-b32 --layers 0 \
    --modes proxy --checkpointing off --batch-size 128 --steps 5 --warmup 2 --compile --json "$OUT/compile-on.json"

# 6. a real (short) training run through the trainer, then eval of its result with --dtype auto on the GPU
run train-short "$PY" -m clipvip train configs/synthetic_finetune.yaml "data.root=$OUT/world" \
    "run.output_dir=$OUT/train" run.device=cuda run.precision=bf16 optim.max_steps=2 run.progress=false
if [ -d "$OUT/train/last" ]; then
    run eval-auto "$PY" -m clipvip eval --model "$OUT/train/last" --data "$OUT/world/test.jsonl" --device cuda \
        --dtype auto --num-frames 8 --max-length 32 --no-progress --out "$OUT/eval-auto.json"
fi

echo
echo "all steps:"
cat "$SUMMARY"
echo "results in $OUT"
