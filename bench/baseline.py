"""PyTorch baseline of `stylefarm render`: the same objective (bench/gatys.py), optimised in float32
on CPU, for speed and quality comparisons.

    python3 bench/baseline.py CONTENT STYLE -o OUT.png --image-size 256 --num-iterations 100 \
        --init content --content-weight 1 --style-weight 100 --tv-weight 0 --seed 0 \
        --optimizer lbfgs --weights FILE.onnx|FILE.safetensors [--report out.json] [--threads N]

The optimisation variable is the network-input tensor x (held as one leaf per channel, so Adam can
use a per-channel learning rate). L-BFGS: torch.optim.LBFGS(lr=1, max_iter=1, history_size=100,
no line search), step() called --num-iterations times (one forward+backward each, history kept
across calls). Adam: lr = learning_rate * per-channel scale (1 for Caffe, 1/(255 std_c) for
torchvision). After every step x is clamped to the network-input images of pixels 0 and 255.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gatys  # noqa: E402


def add_objective_args(p):
    p.add_argument("--weights", required=True, help=".onnx (Keras VGG16, Caffe) or .safetensors (torchvision)")
    p.add_argument("--image-size", type=int, default=256, help="longer side of content and style")
    p.add_argument("--content-weight", type=float, default=1.0)
    p.add_argument("--style-weight", type=float, default=100.0)
    p.add_argument("--tv-weight", type=float, default=0.0)
    p.add_argument("--pooling", choices=["max", "avg"], default="max")
    p.add_argument("--content-layers", default=",".join(gatys.DEFAULT_CONTENT_LAYERS))
    p.add_argument("--style-layers", default=",".join(gatys.DEFAULT_STYLE_LAYERS))
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")


def build_objective(args, content_path, style_paths, dtype):
    """(objective, content tensor) with images resized to --image-size; float32 inputs."""
    if args.threads:
        torch.set_num_threads(args.threads)
    vgg = gatys.load_vgg(args.weights, args.pooling)
    content = vgg.preprocess.to_network(gatys.load_image(content_path, args.image_size))
    styles = [vgg.preprocess.to_network(gatys.load_image(s, args.image_size)) for s in style_paths]
    obj = gatys.Objective(vgg, content, styles, None, args.content_layers.split(","), args.style_layers.split(","),
                          args.content_weight, args.style_weight, args.tv_weight, dtype=dtype)
    return obj, content


def losses(t):
    return {k: float(t[k].detach()) for k in ("content", "style", "tv", "total")}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("content")
    p.add_argument("style")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--num-iterations", type=int, default=100)
    p.add_argument("--init", choices=["content", "random"], default="content")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--optimizer", choices=["lbfgs", "adam"], default="lbfgs")
    p.add_argument("--learning-rate", type=float, default=10.0, help="Adam only, in pixel units")
    p.add_argument("--report", help="write settings, per-iteration losses and timings as JSON")
    add_objective_args(p)
    args = p.parse_args()

    obj, content = build_objective(args, args.content, [args.style], torch.float32)
    pre = obj.vgg.preprocess
    if args.init == "content":
        x0 = content.clone()
    else:
        g = torch.Generator().manual_seed(args.seed)
        h, w = content.shape[2:]
        pixels = (127.5 + 30.0 * torch.randn(h, w, 3, generator=g)).clamp(0, 255)
        x0 = pre.to_network(pixels.numpy())
    lo, hi = pre.bounds()
    chans = [x0[:, c:c + 1].clone().requires_grad_(True) for c in range(3)]
    if args.optimizer == "lbfgs":
        opt = torch.optim.LBFGS(chans, lr=1, max_iter=1, history_size=100, line_search_fn=None)
    else:
        opt = torch.optim.Adam([{"params": [ch], "lr": args.learning_rate * float(pre.scale[c])} for c, ch in enumerate(chans)])

    history = []

    def closure():
        opt.zero_grad()
        t = obj.terms(torch.cat(chans, 1))
        t["total"].backward()
        history.append(losses(t))
        return t["total"]

    start = time.perf_counter()
    for it in range(args.num_iterations):
        if args.optimizer == "lbfgs":
            opt.step(closure)
        else:
            closure()
            opt.step()
        with torch.no_grad():
            for c, ch in enumerate(chans):
                ch.clamp_(float(lo[c]), float(hi[c]))
    seconds = time.perf_counter() - start
    x = torch.cat(chans, 1).detach()
    with torch.no_grad():
        final = losses(obj.terms(x))
    gatys.save_image(pre.to_pixels(x), args.output)
    print(f"{args.num_iterations} iterations in {seconds:.2f} s ({seconds / max(1, args.num_iterations):.3f} s/it); "
          f"first total {history[0]['total']:.6g}, final total {final['total']:.6g} -> {args.output}")
    if args.report:
        report = {"settings": vars(args), "image_hw": list(x.shape[2:]), "torch": torch.__version__,
                  "threads": torch.get_num_threads(), "losses": history, "final": final,
                  "seconds_total": seconds, "seconds_per_iteration": seconds / max(1, args.num_iterations)}
        Path(args.report).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
