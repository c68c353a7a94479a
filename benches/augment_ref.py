#!/usr/bin/env python3
"""Images/s of decode + augment (both PiCIE views) with PIL/torchvision, as the release's
data loader does it; the reference for picie's Rust transforms (src/transforms).

Per image: open + decode (PIL), the release's BaseTransform (shorter side to 640, centre
crop 640), then
  view 1 = P1 (brightness, contrast, saturation, hue, [grayscale], blur) then crop + resize to
           320 (BILINEAR) + horizontal flip,
  view 2 = P2 then resize 640 -> 320 (BILINEAR).
The release does view 1's crop/resize/flip later on the GPU tensor batch; here it is done
in PIL so that both benches do the same image work.

Parameters: --params FILE.json from the Rust bench (`augment_bench --params-out FILE`), so
both benches do identical work; without it, drawn here from the release's distributions.

Usage: augment_ref.py [--dir D] [--workers 2] [--mode process|thread] [--passes 3]
                      [--params FILE.json] [--limit K] [--to-tensor]
"""
import argparse
import json
import os
import random
import statistics
import sys
import time

from PIL import Image, ImageFilter

try:
    import torchvision.transforms.functional as TF
except Exception:  # pragma: no cover  (PIL replay, same maths)
    TF = None
    import numpy as np
    from PIL import ImageEnhance

RES1, RES2 = 320, 640


def adjust(img, name, v):
    if TF is not None:
        return getattr(TF, f"adjust_{name}")(img, v)
    if name == "hue":
        h, s, val = img.convert("HSV").split()
        nh = np.array(h, dtype=np.uint8)
        nh += np.int32(v * 255).astype(np.uint8)
        return Image.merge("HSV", (Image.fromarray(nh, "L"), s, val)).convert("RGB")
    cls = {"brightness": ImageEnhance.Brightness, "contrast": ImageEnhance.Contrast,
           "saturation": ImageEnhance.Color}[name]
    return cls(img).enhance(v)


def photometric(img, p):
    for name in ("brightness", "contrast", "saturation", "hue"):
        if p.get(name) is not None:
            img = adjust(img, name, p[name])
    if p.get("grayscale"):
        g = img.convert("L")
        img = Image.merge("RGB", (g, g, g))
    if p.get("blur_radius") is not None:
        img = img.filter(ImageFilter.GaussianBlur(radius=p["blur_radius"]))
    return img


def base(img):
    w, h = img.size
    size = (RES2, int(RES2 * h / w)) if w <= h else (int(RES2 * w / h), RES2)
    img = img.resize(size, Image.BILINEAR)
    w, h = img.size
    left, top = int(round((w - RES2) / 2.0)), int(round((h - RES2) / 2.0))
    return img.crop((left, top, left + RES2, top + RES2))


def crop_resize_flip(img, g):
    side = img.size[0]
    size = min(max(int(g["crop_frac"] * side), 1), side)
    x0 = int(round((side - size) * g["u_x"]))
    y0 = int(round((side - size) * g["u_y"]))
    img = img.crop((x0, y0, x0 + size, y0 + size)).resize((RES1, RES1), Image.BILINEAR)
    return img.transpose(Image.FLIP_LEFT_RIGHT) if g["flip"] else img


def release_draw(rng):
    """The release's distributions (with its quirks: no grayscale, |blur radius| <= 1.8)."""
    def view():
        p = {}
        for name, x in (("brightness", 0.3), ("contrast", 0.3), ("saturation", 0.3)):
            apply, v = rng.random(), rng.uniform(1 - x, 1 + x)
            p[name] = v if apply < 0.8 else None
        apply, v = rng.random(), rng.uniform(-0.1, 0.1)
        p["hue"] = v if apply < 0.8 else None
        rng.random()  # grayscale: drawn, never applied
        b = rng.random()
        p["blur_radius"] = abs(3.8 * (b - 0.5) + 0.1) if b < 0.5 else None
        return p

    g = {"crop_frac": rng.uniform(0.5, 1.0), "u_x": rng.random(), "u_y": rng.random(),
         "flip": rng.random() < 0.5}
    return {"geometric": g, "views": [view(), view()]}


TO_TENSOR = False


def work(job):
    c0 = time.thread_time()  # this worker's CPU time: robust to other load
    path, aug = job
    img = Image.open(path).convert("RGB")
    b = base(img)
    v1 = crop_resize_flip(photometric(b, aug["views"][0]), aug["geometric"])
    v2 = photometric(b, aug["views"][1]).resize((RES1, RES1), Image.BILINEAR)
    if TO_TENSOR:
        from torchvision import transforms
        norm = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
        v1, v2 = norm(TF.to_tensor(v1)), norm(TF.to_tensor(v2))
    return time.thread_time() - c0


def init_worker(to_tensor):
    global TO_TENSOR
    TO_TENSOR = to_tensor
    if to_tensor:
        import torch
        torch.set_num_threads(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../shared/data/camvid/train"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--mode", choices=["process", "thread"], default="process")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--params")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--to-tensor", action="store_true")
    a = ap.parse_args()

    files = sorted(f for f in os.listdir(a.dir) if f.lower().endswith((".png", ".jpg", ".jpeg")))
    files = files[: a.limit] if a.limit else files
    if a.params:
        rows = json.load(open(a.params))
        table = {(r["epoch"], r["file"]): r["aug"] for r in rows}
    else:
        rng = random.Random(0)
        table = {(e, f): release_draw(rng) for e in range(a.passes) for f in files}

    init_worker(a.to_tensor)
    if a.mode == "process":
        import multiprocessing as mp
        pool = mp.get_context("fork").Pool(a.workers, initializer=init_worker,
                                           initargs=(a.to_tensor,))
        run = lambda jobs: pool.map(work, jobs, chunksize=4)  # noqa: E731
    else:
        from concurrent.futures import ThreadPoolExecutor
        pool = ThreadPoolExecutor(a.workers)
        run = lambda jobs: list(pool.map(work, jobs))  # noqa: E731

    path = lambda f: os.path.join(a.dir, f)  # noqa: E731
    run([(path(f), table[(0, f)]) for f in files[:8]])  # warm-up, not timed
    rates, cpus = [], []
    for e in range(a.passes):
        jobs = [(path(f), table[(e, f)]) for f in files]
        t0 = time.perf_counter()
        cpu = sum(run(jobs))
        dt = time.perf_counter() - t0
        rates.append(len(files) / dt)
        cpus.append(1000 * cpu / len(files))
        print(f"pass {e}: {len(files)} images in {dt:.2f} s = {rates[-1]:.1f} images/s; "
              f"{cpus[-1]:.2f} CPU ms/image")
    tv = "torchvision" if TF is not None else "PIL only"
    extra = ", +to_tensor" if a.to_tensor else ""
    kind = "processes" if a.mode == "process" else "threads"
    cpu = statistics.median(cpus)
    print(f"pil ({tv}): {len(files)} images, {a.workers} {kind}{extra}: "
          f"median {statistics.median(rates):.1f} images/s (best {max(rates):.1f}); "
          f"median {cpu:.2f} CPU ms/image = {1000 * a.workers / cpu:.1f} images/s "
          f"per {a.workers} busy cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
