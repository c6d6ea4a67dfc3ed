"""PyTorch twin of `stylefarm-bench step`: one forward+backward of the seed objective
(bench/gatys.py, float32, CPU or CUDA), timed --evals times after a warm-up, as one JSON line.
On CUDA, TF32 is off (as in stylefarm's engine) and the time waits for the GPU.

    python3 bench/step.py CONTENT STYLE --weights FILE.onnx --image-size 256 --evals 3 [--threads N]
        [--device cuda]
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gatys  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("content")
    p.add_argument("style")
    p.add_argument("--weights", required=True)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--evals", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    vgg = gatys.load_vgg(args.weights, "max").to(device)
    content = vgg.preprocess.to_network(gatys.load_image(args.content, args.image_size)).to(device)
    style = vgg.preprocess.to_network(gatys.load_image(args.style, args.image_size)).to(device)
    # The defaults of `stylefarm render`: relu4_2 content, relu1_1..relu5_1 style, alpha 1, beta 100.
    obj = gatys.Objective(vgg, content, [style], alpha=1.0, beta=100.0, tv_weight=0.0, dtype=torch.float32)
    x = content.clone().requires_grad_(True)

    def step():
        x.grad = None
        obj.terms(x)["total"].backward()
        if cuda:
            torch.cuda.synchronize(device)

    step()
    seconds = []
    for _ in range(args.evals):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"image_hw": list(x.shape[2:]), "seconds": seconds,
                      "median": sorted(seconds)[len(seconds) // 2], "threads": torch.get_num_threads(),
                      "device": str(device)}))


if __name__ == "__main__":
    main()
