"""Pillow's outputs for the RandAugment ops dmlp implements (crates/vision/src/augment.rs), on a
small random image, written to crates/vision/tests/fixtures/augment-ops.json.

    python xtask/python/make_augment_cases.py --out crates/vision/tests/fixtures/augment-ops.json

Needs Pillow and timm (PyPI). The photometric ops are timm's own functions
(`timm.data.auto_augment`); the geometric ones are called with `resample=BILINEAR`
and again with `resample=BICUBIC` (DeiT's recipe: timm passes the transform's interpolation).
"""

import argparse
import json

import numpy as np
import PIL
import timm
from PIL import Image
from timm.data import auto_augment as aa

FILL = (124, 116, 104)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rng = np.random.default_rng(7)
    w, h = 13, 10
    # Smooth structure plus noise, not spanning the full range (so autocontrast and equalize act).
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([20 + 12 * xx, 30 + 15 * yy, 60 + 5 * (xx + yy)], axis=-1)
    pixels = np.clip(base + rng.integers(-10, 10, size=base.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    geo = dict(fillcolor=FILL, resample=Image.BILINEAR)
    cubic = dict(fillcolor=FILL, resample=Image.BICUBIC)
    cases = [
        ("auto_contrast", [], aa.auto_contrast(img)),
        ("equalize", [], aa.equalize(img)),
        ("invert", [], aa.invert(img)),
        ("posterize", [3], aa.posterize(img, 3)),
        ("solarize", [100], aa.solarize(img, 100)),
        ("solarize_add", [77], aa.solarize_add(img, 77)),
        ("color", [0.37], aa.color(img, 0.37)),
        ("color", [1.6], aa.color(img, 1.6)),
        ("contrast", [0.45], aa.contrast(img, 0.45)),
        ("contrast", [1.7], aa.contrast(img, 1.7)),
        ("brightness", [1.3], aa.brightness(img, 1.3)),
        ("sharpness", [0.2], aa.sharpness(img, 0.2)),
        ("sharpness", [1.8], aa.sharpness(img, 1.8)),
        ("rotate", [17.0], aa.rotate(img, 17.0, **geo)),
        ("rotate", [-23.0], aa.rotate(img, -23.0, **geo)),
        ("shear_x", [0.21], aa.shear_x(img, 0.21, **geo)),
        ("shear_y", [-0.27], aa.shear_y(img, -0.27, **geo)),
        ("translate_x_rel", [0.3], aa.translate_x_rel(img, 0.3, **geo)),
        ("translate_y_rel", [-0.25], aa.translate_y_rel(img, -0.25, **geo)),
    ]
    cases = [(n, a, o, "bilinear") for n, a, o in cases]
    cases += [
        ("rotate", [17.0], aa.rotate(img, 17.0, **cubic), "bicubic"),
        ("rotate", [-23.0], aa.rotate(img, -23.0, **cubic), "bicubic"),
        ("shear_x", [0.21], aa.shear_x(img, 0.21, **cubic), "bicubic"),
        ("shear_y", [-0.27], aa.shear_y(img, -0.27, **cubic), "bicubic"),
        ("translate_x_rel", [0.3], aa.translate_x_rel(img, 0.3, **cubic), "bicubic"),
        ("translate_y_rel", [-0.25], aa.translate_y_rel(img, -0.25, **cubic), "bicubic"),
    ]
    out = {
        "computed_by": f"Pillow {Image.__version__ if hasattr(Image, '__version__') else ''} through timm.data.auto_augment",
        "width": w,
        "height": h,
        "input": pixels.flatten().tolist(),
        "cases": [
            {"op": name, "args": args, "resample": resample, "expected": np.asarray(o).flatten().tolist()}
            for name, args, o, resample in cases
        ],
    }
    with open(a.out, "w") as f:
        json.dump(out, f)
        f.write("\n")


if __name__ == "__main__":
    main()
