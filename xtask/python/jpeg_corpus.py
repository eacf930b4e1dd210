"""Checks dmlp's JPEG decoding on a corpus of real-world JPEGs against PIL's (issue 17's done-when).

For every JPEG found under the given folders (Pillow's and libjpeg-turbo's test images, say):
1. PIL's verdict: `Image.open(f).convert("RGB")` reads it, or raises;
2. `dmlp data decode` on each: decoded (clean or damaged) or refused, and, where both read
   it, whether the pixels are equal (the largest difference otherwise);
3. a dataset of the files PIL reads (the iNat 2021 layout of `dmlp data synth`, its images
   replaced by the corpus' files, round-robin), `dmlp data verify --decode` over it (no file
   may be corrupt) and one epoch of training with `bad_images = "error"` (it must finish).
Exits non-zero if dmlp refuses a file PIL reads, if verify or training fails, or (with
`--exact`) if any file's pixels differ.

    python xtask/python/jpeg_corpus.py --dmlp target/debug/dmlp --work target/jpeg-corpus \\
        --pillow 13.0.0 [--images DIR ...]

`--pillow VERSION` fetches Pillow's source release from PyPI and adds its `Tests/images/*.jpg`;
the Python running this needs Pillow and numpy.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image


def fetch_pillow(version, work):
    """Pillow's source release `version` from PyPI (its simple index: no build step), unpacked to
    its test JPEGs."""
    import re
    import urllib.parse
    import urllib.request

    index_url = "https://pypi.org/simple/pillow/"
    index = urllib.request.urlopen(index_url, timeout=60).read().decode()
    filename = f"pillow-{version}.tar.gz"
    hrefs = [h for h in re.findall(r'href="([^"]+)"', index) if h.split("#")[0].endswith("/" + filename)]
    if not hrefs:
        sys.exit(f"{filename} is not in {index_url}")
    archive = work / filename
    if not archive.exists():
        url = urllib.parse.urljoin(index_url, hrefs[0].split("#")[0])
        archive.write_bytes(urllib.request.urlopen(url, timeout=300).read())
    images = work / f"pillow-{version}-tests"
    images.mkdir(exist_ok=True)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = Path(member.name)
            if member.isfile() and name.parent.name == "images" and "Tests" in name.parts and name.suffix in (".jpg", ".jpeg"):
                (images / name.name).write_bytes(tar.extractfile(member).read())
    return images


def pil_verdict(path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(Image.open(path).convert("RGB")), None
    except Exception as e:  # noqa: BLE001 (any failure is PIL's verdict)
        return None, f"{type(e).__name__}: {e}"


def dmlp_decode(dmlp, path, out):
    """(pixels or None, damage or None, error or None)."""
    out.mkdir(parents=True, exist_ok=True)
    run = subprocess.run([dmlp, "data", "decode", str(path), "--out", str(out)], capture_output=True, text=True)
    png = out / f"{path.stem}.png"
    if run.returncode != 0 or not png.exists():
        error = next((l for l in run.stderr.splitlines() if l.startswith("error")), run.stderr.strip())
        return None, None, error
    damage = next((l.split("decodes it: ", 1)[-1] for l in run.stderr.splitlines() if l.startswith("warning")), None)
    pixels = np.asarray(Image.open(png).convert("RGB"))
    png.unlink()
    return pixels, damage, None


def build_dataset(dmlp, files, root):
    if root.exists():
        shutil.rmtree(root)
    per_class = -(-len(files) // 3)
    subprocess.run(
        [dmlp, "data", "synth", "--out", str(root), "--groups", "1", "--per-group", "2", "--distinct", "1",
         "--train-per-class", str(per_class), "--val-per-class", str(max(2, per_class // 3)), "--missing-fraction", "0"],
        check=True,
        capture_output=True,
    )
    slots = []
    for split in ["train.json", "val.json"]:
        slots += [image["file_name"] for image in json.loads((root / split).read_text())["images"]]
    for k, name in enumerate(slots):
        shutil.copyfile(files[k % len(files)], root / name)
    return len(slots)


CONFIG = """
[model]
backbone = {{ type = "resnet", block = "basic", layers = [1, 1, 1, 1], width = 8 }}
num_classes = 3
metadata = "geo_temporal"

[model.fusion]
type = "dynamic_mlp_c"
mlp_d = 16
mlp_h = 8

[data]
root = "{root}"
image_size = 16
workers = 2
bad_images = "error"

[train]
epochs = 1
batch_size = 8
lr = 0.05
seed = 1
"""


def corpus_parser(doc):
    """The corpus scripts' common arguments: --dmlp, --work, --images, --pillow."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dmlp", required=True)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--images", nargs="*", default=[], type=Path)
    parser.add_argument("--pillow", help="a Pillow version whose test images to fetch from PyPI")
    return parser


def corpus_files(args, suffixes):
    """The files under --images and Pillow's test images (fetched into --work) with `suffixes`."""
    args.work.mkdir(parents=True, exist_ok=True)
    folders = list(args.images) + ([fetch_pillow(args.pillow, args.work)] if args.pillow else [])
    files = sorted({p for folder in folders for p in folder.rglob("*") if p.suffix.lower() in suffixes})
    if not files:
        sys.exit("no files found")
    return files


def main():
    parser = corpus_parser(__doc__)
    parser.add_argument("--exact", action="store_true", help="fail on any pixel difference")
    args = parser.parse_args()
    files = corpus_files(args, (".jpg", ".jpeg"))
    rows, failures, pil_clean = [], [], []
    for path in files:
        pil, pil_error = pil_verdict(path)
        ours, damage, error = dmlp_decode(args.dmlp, path, args.work / "decoded")
        if pil is not None:
            pil_clean.append(path)
        if pil is not None and ours is None:
            verdict = "REFUSED (PIL reads it)"
            failures.append(f"{path.name}: {error}")
        elif pil is None and ours is None:
            verdict = "refused, as by PIL"
        elif pil is None:
            verdict = "decoded (PIL refuses it)"
        elif pil.shape != ours.shape:
            verdict = f"size {ours.shape} vs PIL's {pil.shape}"
            failures.append(f"{path.name}: {verdict}")
        else:
            worst = int(np.abs(pil.astype(int) - ours.astype(int)).max())
            verdict = "PIL's pixels" if worst == 0 else f"differs by up to {worst} levels"
            if worst and args.exact:
                failures.append(f"{path.name}: {verdict}")
        if damage:
            verdict += f"; damaged: {damage}"
        rows.append((str(path.relative_to(path.parents[1])), verdict, pil_error or ""))
    for name, verdict, pil_error in rows:
        print(f"{name:60} {verdict}" + (f"  [PIL: {pil_error}]" if pil_error else ""))
    exact = sum(1 for _, v, _ in rows if v.startswith("PIL's pixels"))
    print(f"\n{len(files)} files: PIL reads {len(pil_clean)}; dmlp gives PIL's pixels for {exact} of them")

    root = args.work / "dataset"
    slots = build_dataset(args.dmlp, pil_clean, root)
    verify = subprocess.run([args.dmlp, "data", "verify", "--dataset", "inat2021", "--root", str(root), "--decode", "--json"],
                            capture_output=True, text=True)
    report = json.loads(verify.stdout)
    for split, s in report["splits"].items():
        print(f"verify {split}: {s['records']} records, {s['images_corrupt']} corrupt, {s['images_damaged']} damaged")
        if s["images_corrupt"]:
            failures.append(f"verify {split}: {s['corrupt_files']}: {s['corrupt_errors']}")
    config = args.work / "corpus.toml"
    config.write_text(CONFIG.format(root=root.resolve()))  # the config resolves relative roots against its own folder
    run_dir = args.work / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    train = subprocess.run([args.dmlp, "train", "--config", str(config), "--run-dir", str(run_dir), "--quiet"],
                           capture_output=True, text=True)
    print(f"train: one epoch over {slots} images (the corpus round-robin): exit {train.returncode}")
    if train.returncode != 0:
        failures.append(f"training failed: {train.stderr.strip()[-2000:]}")
    finish(failures)


def finish(failures):
    """Prints the failures and exits non-zero, or prints ok."""
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    main()
