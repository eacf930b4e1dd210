"""PIL peer of `cargo xtask bench data`: the same JPEGs, the reference's transforms, one thread.

Training: RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor + Normalize; evaluation:
Resize(256) + CenterCrop(224) + ToTensor + Normalize; each image opened as the reference's dataset
does (`Image.open(...).convert("RGB")`) from bytes already in memory. torchvision's transforms are
used when it is installed, else equivalent PIL + numpy code (the same PIL calls torchvision makes).
It serves timed passes on request (one line on standard input, `<train|eval|decode> <file
prefix>`, answered with one JSON line), so that `cargo xtask bench data` can interleave them with
its own and both sides meet the same machine load.
"""
import argparse
import io
import json
import math
import os
import random
import sys
import time

import numpy as np
import PIL
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def numpy_transforms(size):
    resize = round(size * 256 / 224)

    def to_tensor(img):
        a = np.asarray(img, dtype=np.float32) / 255.0
        return ((a - MEAN) / STD).transpose(2, 0, 1).copy()

    def train(img):
        w, h = img.size
        area = w * h
        for _ in range(10):
            target = area * random.uniform(0.08, 1.0)
            aspect = math.exp(random.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                top, left = random.randint(0, h - ch), random.randint(0, w - cw)
                break
        else:
            cw, ch, top, left = w, h, 0, 0
        img = img.crop((left, top, left + cw, top + ch)).resize((size, size), Image.BILINEAR)
        if random.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return to_tensor(img)

    def evaluate(img):
        w, h = img.size
        if w <= h:
            nw, nh = resize, int(resize * h / w)
        else:
            nw, nh = int(resize * w / h), resize
        img = img.resize((nw, nh), Image.BILINEAR)
        left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
        return to_tensor(img.crop((left, top, left + size, top + size)))

    return train, evaluate, "PIL + numpy (torchvision-equivalent)"


def torchvision_transforms(size):
    import torch
    import torchvision
    import torchvision.transforms as T

    torch.set_num_threads(1)
    norm = [T.ToTensor(), T.Normalize(MEAN.tolist(), STD.tolist())]
    train = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip()] + norm)
    evaluate = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size)] + norm)
    return train, evaluate, f"torchvision {torchvision.__version__}"


def one_pass(data, transform):
    start = time.perf_counter()
    for b in data:
        transform(Image.open(io.BytesIO(b)).convert("RGB"))
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    try:
        train, evaluate, name = torchvision_transforms(args.size)
    except ImportError:
        train, evaluate, name = numpy_transforms(args.size)
    random.seed(0)
    with open(os.path.join(args.dir, "files.txt")) as listing:
        names = [line.strip() for line in listing if line.strip()]
    data = {name: open(os.path.join(args.dir, name), "rb").read() for name in names}
    transforms = {"train": train, "eval": evaluate, "decode": lambda img: img}
    print(json.dumps({"pillow_version": PIL.__version__, "transforms": name}), flush=True)
    # Interleaved with dmlp's passes: each line asks for one timed pass, "<transform> <prefix>".
    for line in sys.stdin:
        what, prefix = line.split()
        subset = [b for n, b in sorted(data.items()) if n.startswith(prefix)]
        seconds = one_pass(subset, transforms[what])
        print(json.dumps({"seconds": seconds, "images": len(subset)}), flush=True)


if __name__ == "__main__":
    main()
