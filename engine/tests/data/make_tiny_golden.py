"""Golden values of the stylefarm objective on tiny made-up VGG16/VGG19 weights.

Regenerate (from the repo root):
    python3 engine/tests/data/make_tiny_golden.py

Writes, next to this script:
  tiny_vgg16.safetensors, tiny_vgg19.safetensors  torchvision names features.{i}.weight/.bias,
      float32, channels 4/6/8/8/8 per block, seeded He-like weights.
  tiny_golden.safetensors  per case: float32 inputs {case}.content, {case}.style{k}, {case}.x
      (1,3,H,W network-input tensors) and float64 outputs {case}.j_content [1], .j_style [1],
      .j_style_layers [L], .tv [1], .total [1], .grad (1,3,H,W) = dJ/dx, and the unweighted
      per-term gradients .grad_content/.grad_style/.grad_tv (dJ_content/dx, dJ_style/dx, dTV/dx).
  tiny_golden.json  per case: model, pooling, layers, blend weights, alpha/beta/tv_weight, shapes.
The reference is bench/gatys.py in float64 (weights and inputs converted from float32).
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2] / "bench"))
import gatys  # noqa: E402

CHANNELS = [4, 6, 8, 8, 8]
CONVS = {"tiny_vgg16.safetensors": [2, 2, 3, 3, 3], "tiny_vgg19.safetensors": [2, 2, 4, 4, 4]}
D = gatys.DEFAULT_STYLE_LAYERS
CASES = [  # name, model, pooling, x (H, W), style sizes, blend, content layers, style layers, alpha, beta, tv
    ("vgg16_max_odd", "tiny_vgg16.safetensors", "max", (29, 37), [(33, 41)], [1.0], ["relu4_2"], D, 1.0, 300.0, 4e-3),
    ("vgg16_avg_even", "tiny_vgg16.safetensors", "avg", (32, 48), [(40, 56), (24, 30)], [0.7, 0.3], ["relu4_2"], D, 1.0, 1e3, 3e-4),
    ("vgg19_max_layers", "tiny_vgg19.safetensors", "max", (35, 27), [(35, 27)], [1.0], ["conv4_2"], ["relu1_2", "conv3_1", "pool2"], 1.0, 1e3, 5e-3),
    ("vgg16_max_tiny", "tiny_vgg16.safetensors", "max", (17, 19), [(21, 23)], [1.0], ["relu4_2"], D, 1.0, 100.0, 2e-3),
]


def make_weights(name, convs, seed):
    rng = np.random.default_rng(seed)
    tensors, i, cin = {}, 0, 3
    for n_conv, cout in zip(convs, CHANNELS):
        for _ in range(n_conv):
            w = rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (9 * cin))
            b = rng.normal(0.05, 0.05, cout)
            tensors[f"features.{i}.weight"] = torch.tensor(w, dtype=torch.float32)
            tensors[f"features.{i}.bias"] = torch.tensor(b, dtype=torch.float32)
            i, cin = i + 2, cout
        i += 1  # the pool
    save_file(tensors, str(HERE / name))
    (HERE / name).chmod(0o644)


def grad_of(value, x):
    return torch.autograd.grad(value, x, retain_graph=True)[0]


def main():
    for seed, (name, convs) in enumerate(CONVS.items()):
        make_weights(name, convs, seed)
    out, meta = {}, {}
    for seed, (case, model, pooling, (h, w), style_hw, blend, cl, sl, alpha, beta, tv_w) in enumerate(CASES, 100):
        rng = np.random.default_rng(seed)
        randn = lambda hh, ww: torch.tensor(rng.standard_normal((1, 3, hh, ww)), dtype=torch.float32)  # noqa: E731
        content, styles, x32 = randn(h, w), [randn(*s) for s in style_hw], randn(h, w)
        vgg = gatys.load_vgg(HERE / model, pooling)
        obj = gatys.Objective(vgg, content, styles, blend, cl, sl, alpha, beta, tv_w, dtype=torch.float64)
        x = x32.double().requires_grad_(True)
        t = obj.terms(x)
        g = {k: grad_of(t[k], x) for k in ("content", "style", "tv", "total")}
        deepest = vgg.to(torch.float64).features(x, ["relu5_1"])["relu5_1"]
        assert (deepest > 0).any(), f"{case}: relu5_1 all zero"
        out[f"{case}.content"], out[f"{case}.x"] = content, x32
        for k, s in enumerate(styles):
            out[f"{case}.style{k}"] = s
        out.update({f"{case}.j_content": t["content"].detach().reshape(1), f"{case}.j_style": t["style"].detach().reshape(1),
                    f"{case}.j_style_layers": t["style_layers"].detach(), f"{case}.tv": t["tv"].detach().reshape(1),
                    f"{case}.total": t["total"].detach().reshape(1), f"{case}.grad": g["total"],
                    f"{case}.grad_content": g["content"], f"{case}.grad_style": g["style"], f"{case}.grad_tv": g["tv"]})
        norms = {"content": alpha * g["content"].norm().item(), "style": beta * g["style"].norm().item(),
                 "tv": tv_w * g["tv"].norm().item()}
        meta[case] = {
            "model": model, "pooling": pooling, "content_layers": cl, "style_layers": sl,
            "style_blend_weights": blend, "alpha": alpha, "beta": beta, "tv_weight": tv_w,
            "shapes": {"content": [1, 3, h, w], "x": [1, 3, h, w],
                       **{f"style{k}": [1, 3, *s] for k, s in enumerate(style_hw)}},
            "values": {"j_content": t["content"].item(), "j_style": t["style"].item(), "tv": t["tv"].item(),
                       "total": t["total"].item(), "j_style_layers": t["style_layers"].tolist()},
            "weighted_grad_norms": norms,
            "relu5_1_positive_fraction": (deepest > 0).double().mean().item(),
        }
        print(case, json.dumps(meta[case]["values"]), "grad norms", {k: f"{v:.3g}" for k, v in norms.items()},
              "relu5_1>0:", f"{meta[case]['relu5_1_positive_fraction']:.2f}")
    save_file({k: v.contiguous() for k, v in out.items()}, str(HERE / "tiny_golden.safetensors"))
    (HERE / "tiny_golden.safetensors").chmod(0o644)
    doc = {"generated_by": "python3 engine/tests/data/make_tiny_golden.py",
           "note": "inputs are network-input tensors (no preprocessing); outputs float64 from float32 inputs",
           "cases": meta}
    (HERE / "tiny_golden.json").write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
