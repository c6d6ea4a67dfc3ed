"""PyTorch reference of the stylefarm objective (Gatys et al. style transfer on VGG16/VGG19).

One implementation shared by bench/baseline.py, bench/objective.py and the golden-value
generators in engine/tests/data/. It works on the *network-input* tensor x, shape (1, 3, H, W),
i.e. an image already preprocessed for the weights (see `Preprocess`).

Definitions (the Rust engine implements the same):
  * VGG: blocks of 3x3 convs (stride 1, pad 1, bias) each followed by ReLU, then a 2x2 stride-2
    max or avg pool (floor on odd sizes). Layer names conv{b}_{n} (pre-ReLU), relu{b}_{n}, pool{b}.
  * J_content = sum over content layers of 1/2 ||a_C - a_G||^2.
  * Gram G = F F^T, F = (n_c, n_h*n_w) reshape, unnormalised.
  * J_l = ||G_S - G_G||_F^2 / (2 n_h n_w n_c)^2 with the generated image's dims; a style Gram
    whose n_h*n_w differs from G's is first multiplied by (n_h n_w)_G / (n_h n_w)_S; several
    styles are blended with weights normalised to sum 1. J_style = (1/L) sum_l J_l.
  * TV = sum of squared vertical plus horizontal neighbour differences of x (all channels).
  * J = alpha J_content + beta J_style + tv_weight TV.
"""
import re

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_CONTENT_LAYERS = ["relu4_2"]
DEFAULT_STYLE_LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]


class Preprocess:
    """Pixel (0..255, RGB) <-> network-input map, in float32 arithmetic like engine/src/preprocess.rs.

    caffe: BGR, pixel minus mean (103.939, 116.779, 123.68).
    torchvision: RGB, pixel * 1/(255 std) - mean/std, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
    """

    def __init__(self, kind):
        f = np.float32
        self.kind = kind
        if kind == "caffe":
            self.rgb_channel = [2, 1, 0]
            self.scale = np.ones(3, f)
            self.offset = -np.array([103.939, 116.779, 123.68], f)
        elif kind == "torchvision":
            mean, std = np.array([0.485, 0.456, 0.406], f), np.array([0.229, 0.224, 0.225], f)
            self.rgb_channel = [0, 1, 2]
            self.scale = f(1.0) / (f(255.0) * std)
            self.offset = -mean / std
        else:
            raise ValueError(kind)

    def to_network(self, rgb):
        """uint8/float array (H, W, 3) RGB pixels -> float32 tensor (1, 3, H, W)."""
        px = np.asarray(rgb, np.float32)[:, :, self.rgb_channel].transpose(2, 0, 1)
        net = px * self.scale[:, None, None] + self.offset[:, None, None]
        return torch.from_numpy(np.ascontiguousarray(net, np.float32))[None]

    def to_pixels(self, x):
        """tensor (1, 3, H, W) -> uint8 array (H, W, 3) RGB, clamped and rounded."""
        net = x.detach().double().cpu().numpy()[0]
        px = (net - self.offset[:, None, None].astype(np.float64)) / self.scale[:, None, None]
        rgb = np.empty(px.shape[1:] + (3,))
        for c in range(3):
            rgb[:, :, self.rgb_channel[c]] = px[c]
        return np.clip(np.round(rgb), 0, 255).astype(np.uint8)

    def bounds(self):
        """Per-network-channel valid range: the images of pixel 0 and 255 (float32 arrays)."""
        return self.offset.copy(), np.float32(255.0) * self.scale + self.offset


class Vgg:
    """VGG feature stack: blocks[b] = [(weight OIHW, bias), ...] of block b+1."""

    def __init__(self, blocks, preprocess, pooling="max"):
        assert pooling in ("max", "avg")
        self.blocks, self.preprocess, self.pooling = blocks, preprocess, pooling

    def to(self, dtype):
        blocks = [[(w.to(dtype), b.to(dtype)) for w, b in blk] for blk in self.blocks]
        return Vgg(blocks, self.preprocess, self.pooling)

    def layer_names(self):
        names = []
        for bi, blk in enumerate(self.blocks, 1):
            for ni in range(1, len(blk) + 1):
                names += [f"conv{bi}_{ni}", f"relu{bi}_{ni}"]
            names.append(f"pool{bi}")
        return names

    def features(self, x, layers):
        """{name: activation (1, C, h, w)} for the requested layer names; stops at the deepest."""
        want, out = set(layers), {}
        unknown = want - set(self.layer_names())
        if unknown:
            raise ValueError(f"unknown layers {sorted(unknown)}")
        for bi, blk in enumerate(self.blocks, 1):
            for ni, (w, b) in enumerate(blk, 1):
                if want <= out.keys():
                    return out
                x = F.conv2d(x, w, b, padding=1)
                if f"conv{bi}_{ni}" in want:
                    out[f"conv{bi}_{ni}"] = x
                x = F.relu(x)
                if f"relu{bi}_{ni}" in want:
                    out[f"relu{bi}_{ni}"] = x
            x = F.max_pool2d(x, 2, 2) if self.pooling == "max" else F.avg_pool2d(x, 2, 2)
            if f"pool{bi}" in want:
                out[f"pool{bi}"] = x
        return out


def _blocks_from_convs(convs):
    """[(block, n, w, b)] -> list of blocks, checking the numbering is complete."""
    blocks = {}
    for bi, ni, w, b in sorted(convs, key=lambda t: (t[0], t[1])):
        blocks.setdefault(bi, []).append((w, b))
        assert len(blocks[bi]) == ni, f"missing conv{bi}_{len(blocks[bi])}"
    assert sorted(blocks) == list(range(1, len(blocks) + 1)), sorted(blocks)
    return [blocks[k] for k in sorted(blocks)]


def load_vgg(path, pooling="max"):
    """Load VGG conv weights (float32) from a Keras/tf2onnx .onnx (Caffe preprocessing) or a
    torchvision-named .safetensors (`features.{i}.weight/.bias`, torchvision preprocessing)."""
    path = str(path)
    if path.endswith(".onnx"):
        import onnx
        from onnx import numpy_helper

        inits = {i.name: i for i in onnx.load(path).graph.initializer}
        pat = re.compile(r"block(\d+)_conv(\d+)_1/convolution/ReadVariableOp:0$")
        convs = []
        for name, init in inits.items():
            m = pat.search(name)
            if m:
                w = torch.from_numpy(numpy_helper.to_array(init).copy())
                bias = inits[name.replace("convolution/ReadVariableOp:0", "Squeeze:0")]
                b = torch.from_numpy(numpy_helper.to_array(bias).copy())
                convs.append((int(m[1]), int(m[2]), w, b))
        return Vgg(_blocks_from_convs(convs), Preprocess("caffe"), pooling)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        t = load_file(path)
        idx = sorted(int(k.split(".")[1]) for k in t if re.fullmatch(r"features\.\d+\.weight", k))
        convs, bi, ni = [], 1, 0
        for prev, i in zip([None] + idx, idx):
            if prev is not None and i - prev > 2:  # a pool sits between two blocks
                bi, ni = bi + 1, 0
            ni += 1
            convs.append((bi, ni, t[f"features.{i}.weight"].float(), t[f"features.{i}.bias"].float()))
        return Vgg(_blocks_from_convs(convs), Preprocess("torchvision"), pooling)
    raise ValueError(f"unsupported weights file {path} (want .onnx or .safetensors)")


def gram(a):
    f = a.reshape(a.shape[1], -1)
    return f @ f.T


def tv_loss(x):
    return ((x[:, :, 1:, :] - x[:, :, :-1, :]) ** 2).sum() + ((x[:, :, :, 1:] - x[:, :, :, :-1]) ** 2).sum()


class Objective:
    """J(x) for fixed content/style images, in the dtype of `dtype` (weights and targets cast)."""

    def __init__(self, vgg, content, styles, blend=None, content_layers=None, style_layers=None,
                 alpha=1.0, beta=1.0, tv_weight=0.0, dtype=torch.float64):
        self.vgg = vgg.to(dtype)
        self.dtype = dtype
        self.content_layers = list(content_layers or DEFAULT_CONTENT_LAYERS)
        self.style_layers = list(style_layers or DEFAULT_STYLE_LAYERS)
        self.alpha, self.beta, self.tv_weight = alpha, beta, tv_weight
        blend = [1.0] * len(styles) if blend is None else list(blend)
        assert len(blend) == len(styles) and sum(blend) > 0
        self.blend = [w / sum(blend) for w in blend]
        with torch.no_grad():
            fc = self.vgg.features(content.to(dtype), self.content_layers)
            self.content_targets = {l: fc[l].detach() for l in self.content_layers}
            self.style_grams = []  # per style: {layer: (gram, n_h*n_w)}
            for s in styles:
                fs = self.vgg.features(s.to(dtype), self.style_layers)
                self.style_grams.append({l: (gram(fs[l]), fs[l].shape[2] * fs[l].shape[3]) for l in self.style_layers})

    def terms(self, x):
        """dict: content, style, style_layers (tensor [L]), tv, total; differentiable in x."""
        feats = self.vgg.features(x, self.content_layers + self.style_layers)
        j_content = sum(0.5 * ((feats[l] - self.content_targets[l]) ** 2).sum() for l in self.content_layers)
        per_layer = []
        for l in self.style_layers:
            a = feats[l]
            n_c, hw = a.shape[1], a.shape[2] * a.shape[3]
            target = sum(w * g[l][0] * (hw / g[l][1]) for w, g in zip(self.blend, self.style_grams))
            per_layer.append(((target - gram(a)) ** 2).sum() / float(2 * hw * n_c) ** 2)
        j_layers = torch.stack(per_layer)
        j_style = j_layers.sum() / len(self.style_layers)
        tv = tv_loss(x)
        total = self.alpha * j_content + self.beta * j_style + self.tv_weight * tv
        return dict(content=j_content, style=j_style, style_layers=j_layers, tv=tv, total=total)


def load_image(path, size=None):
    """RGB uint8 array (H, W, 3); with `size`, resized (LANCZOS, aspect kept) so the longer side
    is `size` (shorter side floor(s * size / long + 0.5)); no resize when it already is."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    if size is not None:
        w, h = img.size
        if max(w, h) != size:
            k = size / max(w, h)
            img = img.resize((max(1, int(w * k + 0.5)), max(1, int(h * k + 0.5))), Image.LANCZOS)
    return np.asarray(img)


def save_image(rgb, path):
    from PIL import Image

    Image.fromarray(rgb).save(path)
