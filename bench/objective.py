"""Evaluate the stylefarm objective (float64, bench/gatys.py) of finished images.

    python3 bench/objective.py --content C --style S --weights W [--image-size 256 --content-weight 1
        --style-weight 100 --tv-weight 0 ...] OUT1.png [OUT2.png ...]

Content and style are resized exactly as bench/baseline.py does. Each output image is read as RGB
pixels and preprocessed for the weights; one whose size differs from the resized content is resized
the same way first (and reported with "resized": true). Prints one JSON line per file:
{"file", "content", "style", "tv", "total"} (the unweighted terms and the weighted total).
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gatys  # noqa: E402
from baseline import add_objective_args, build_objective, losses  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--content", required=True)
    p.add_argument("--style", required=True, action="append", help="repeat for several (equal blend)")
    p.add_argument("outputs", nargs="+")
    add_objective_args(p)
    args = p.parse_args()
    obj, content = build_objective(args, args.content, args.style, torch.float64)
    for path in args.outputs:
        rgb = gatys.load_image(path)
        resized = list(rgb.shape[:2]) != list(content.shape[2:])
        if resized:
            rgb = gatys.load_image(path, args.image_size)
            if list(rgb.shape[:2]) != list(content.shape[2:]):
                sys.exit(f"{path}: size {rgb.shape[1]}x{rgb.shape[0]} does not match the content's")
        x = obj.vgg.preprocess.to_network(rgb).double()
        with torch.no_grad():
            res = {"file": path, **losses(obj.terms(x))}
        if resized:
            res["resized"] = True
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
