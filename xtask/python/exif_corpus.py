"""Checks what `dmlp data exif` reads from real-world photos against PIL's `getexif()`.

For every JPEG, PNG, WebP and TIFF under the given folders (Pillow's test images, fetched from
PyPI with `--pillow VERSION`, hold camera files with GPS blocks, damaged and odd EXIF): PIL's
GPS position (GPSLatitude/GPSLongitude with their references), date (DateTimeOriginal, else
DateTime) and Orientation, beside dmlp's. Exits non-zero when dmlp fails on a file, or reads a
different position, date or orientation from a file whose EXIF PIL reads cleanly; files PIL
cannot parse are listed with what dmlp made of them (notes, never a failure).

    python xtask/python/exif_corpus.py --dmlp target/debug/dmlp --work target/exif-corpus \\
        --pillow 13.0.0 [--images DIR ...]
"""

import calendar
import json
import subprocess
import sys
import warnings
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from jpeg_corpus import corpus_files, corpus_parser, finish  # noqa: E402

SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff")


def exif_date(text):
    """dmlp's rule: the calendar date of YYYY:MM:DD[ HH:MM:SS]; None for blank/zero/invalid."""
    if not isinstance(text, str):
        return None
    part = text.strip("\x00 ").split(" ")[0].split("T")[0]
    if not part or set(part) <= set("0:- "):
        return None
    fields = part.replace("-", ":").split(":")
    if len(fields) != 3 or not all(f.isdigit() for f in fields):
        return None
    y, m, d = (int(f) for f in fields)
    if not (1 <= m <= 12) or not (1 <= d <= calendar.monthrange(y, m)[1]):
        return None
    return f"{y:04}-{m:02}-{d:02}"


def pil_reading(path):
    """(latitude, longitude, date, orientation) as PIL reads them, or raises."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as img:
            exif = img.getexif()
            gps = exif.get_ifd(0x8825)
            lat = lon = None
            if 2 in gps and 4 in gps and gps.get(0x0009, "A") != "V":
                def degrees(value, ref, negative):
                    parts = [float(v) for v in (value if isinstance(value, tuple) else (value,))]
                    d = sum(p / u for p, u in zip(parts, (1, 60, 3600)))
                    return -d if str(ref).upper().startswith(negative) else d
                lat = degrees(gps[2], gps.get(1, "N"), "S")
                lon = degrees(gps[4], gps.get(3, "E"), "W")
                if not (abs(lat) <= 90 and abs(lon) <= 180):
                    lat = lon = None
            date = exif_date(exif.get_ifd(0x8769).get(36867)) or exif_date(exif.get(306))
            orientation = exif.get(274, 1)
            orientation = orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1
            return lat, lon, date, orientation


def main():
    args = corpus_parser(__doc__).parse_args()
    files = corpus_files(args, SUFFIXES)
    out = subprocess.run([args.dmlp, "data", "exif", *map(str, files)], capture_output=True, text=True)
    ours = {Path(o["file"]): o for o in map(json.loads, out.stdout.splitlines())}
    failures, agree, with_gps, with_date, unreadable = [], 0, 0, 0, 0
    for path in files:
        o = ours.get(path)
        if o is None or o.get("error"):
            failures.append(f"{path.name}: dmlp: {o and o.get('error')}")
            continue
        try:
            lat, lon, date, orientation = pil_reading(path)
        except Exception as e:  # PIL cannot parse this file's EXIF (or the file)
            unreadable += 1
            print(f"{path.name:50} PIL: {type(e).__name__}; dmlp: position {o['latitude']}, {o['longitude']}, date {o['date']}, notes {o['notes']}")
            continue
        same_place = (lat is None) == (o["latitude"] is None) and (
            lat is None or (abs(lat - o["latitude"]) < 1e-6 and abs(lon - o["longitude"]) < 1e-6))
        same = same_place and date == o["date"] and orientation == o["orientation"]
        with_gps += lat is not None
        with_date += date is not None
        if same:
            agree += 1
            if lat is not None or date is not None or orientation != 1:
                print(f"{path.name:50} agree: {lat}, {lon}, {date}, orientation {orientation}")
        else:
            failures.append(f"{path.name}: PIL {lat}, {lon}, {date}, {orientation}; dmlp {o['latitude']}, "
                            f"{o['longitude']}, {o['date']}, {o['orientation']} ({o['notes']})")
    print(f"\n{len(files)} files: PIL parses {len(files) - unreadable} ({with_gps} with a GPS position, "
          f"{with_date} with a date); dmlp agrees on {agree}; {unreadable} PIL cannot parse, read by dmlp with notes")
    finish(failures)


if __name__ == "__main__":
    main()
