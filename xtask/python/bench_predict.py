"""PyTorch + PIL peer of `cargo xtask bench predict`: the same work, timed the same way.

For each batch of photos: PIL opens the file, reads the GPS position and date from its EXIF,
converts it to RGB, torchvision's Resize(256) + CenterCrop(224) + ToTensor + Normalize (or the
same in plain PIL/PyTorch without torchvision), the reference's sin/cos location encoding, then
ResNet-50 + FCNet + Dynamic MLP-C + fc in eval mode under inference_mode, softmax and the top 5.
Prints one JSON object on the last line: load_s (model built), first_result_s, total_s.
"""
import argparse
import calendar
import datetime
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_model import FCNet, FusionModule, ResNet50Features  # noqa: E402

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

try:
    import torchvision.transforms as T

    TRANSFORM = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])
except ImportError:  # the same steps by hand
    def TRANSFORM(img):
        w, h = img.size
        s = 256 / min(w, h)
        img = img.resize((max(256, int(w * s)) if w > h else 256, max(256, int(h * s)) if h > w else 256), Image.BILINEAR)
        w, h = img.size
        left, top = int(round((w - 224) / 2)), int(round((h - 224) / 2))
        img = img.crop((left, top, left + 224, top + 224))
        x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(224, 224, 3).permute(2, 0, 1).float() / 255
        return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def exif_observation(img):
    """(lat, lon, date) from the EXIF GPS IFD and DateTimeOriginal/DateTime; None where missing."""
    exif = img.getexif()
    gps = exif.get_ifd(0x8825)
    lat = lon = None
    if 2 in gps and 4 in gps:
        def degrees(v, ref, neg):
            d = float(v[0]) + float(v[1]) / 60 + float(v[2]) / 3600
            return -d if ref == neg else d
        lat = degrees(gps[2], gps.get(1, "N"), "S")
        lon = degrees(gps[4], gps.get(3, "E"), "W")
    text = exif.get_ifd(0x8769).get(36867) or exif.get(306)
    date = None
    if text:
        try:
            date = datetime.datetime.strptime(text[:10], "%Y:%m:%d").date()
        except ValueError:
            pass
    return lat, lon, date


def encode(lat, lon, date):
    """The reference's geo_temporal vector: sin then cos of pi * (lat/90, lon/180, day ratio)."""
    if lat is None or lon is None or date is None:
        return [0.0] * 6
    days = 366 if calendar.isleap(date.year) else 365
    t = date.timetuple().tm_yday / days * 2 - 1
    v = [lat / 90, lon / 180, t]
    return [math.sin(math.pi * x) for x in v] + [math.cos(math.pi * x) for x in v]


class Model(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.backbone = ResNet50Features()
        self.loc_net = FCNet(6, 256)
        self.loc_att = FusionModule()
        self.fc = nn.Linear(2048, classes)

    def forward(self, x, loc):
        return self.fc(self.loc_att(self.backbone(x), self.loc_net(loc)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", required=True, help="a file listing the photos, one per line")
    parser.add_argument("--classes", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with open(args.photos) as f:
        photos = [line.strip() for line in f if line.strip()]

    start = time.perf_counter()
    model = Model(args.classes).eval()
    load_s = time.perf_counter() - start

    start = time.perf_counter()
    first = None
    with torch.inference_mode():
        for i in range(0, len(photos), args.batch_size):
            images, locs = [], []
            for path in photos[i:i + args.batch_size]:
                with Image.open(path) as img:
                    lat, lon, date = exif_observation(img)
                    if date is None or lat is None:
                        raise SystemExit(f"{path}: no EXIF position or date")
                    images.append(TRANSFORM(img.convert("RGB")))
                locs.append(encode(lat, lon, date))
            logits = model(torch.stack(images), torch.tensor(locs))
            top = torch.softmax(logits, 1).topk(5, 1)
            _ = top.values.tolist(), top.indices.tolist()
            if first is None:
                first = time.perf_counter() - start
    total_s = time.perf_counter() - start
    print(json.dumps({"torch_version": torch.__version__, "load_s": load_s, "first_result_s": first, "total_s": total_s}))


if __name__ == "__main__":
    main()
