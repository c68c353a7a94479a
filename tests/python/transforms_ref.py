#!/usr/bin/env python3
"""Reference outputs for picie's image transforms (src/transforms), from PIL/torchvision.

Usage: transforms_ref.py INPUT.png CASES.json OUT_DIR

CASES.json is a list of cases, each {"name": str, "op": str, ...parameters}. For each case
OUT_DIR/<name>.png (u8 RGB) is written, or OUT_DIR/<name>.f32 (raw little-endian float32,
C x H x W) for "to_tensor". OUT_DIR/versions.json records the library versions used.

Ops (parameters), all on the input image, as the PiCIE release calls them:
  brightness (factor)     TF.adjust_brightness      = ImageEnhance.Brightness
  contrast (factor)       TF.adjust_contrast        = ImageEnhance.Contrast
  saturation (factor)     TF.adjust_saturation      = ImageEnhance.Color
  hue (hue)               TF.adjust_hue             (PIL HSV, uint8 hue shift)
  grayscale ()            TF.rgb_to_grayscale(img, 3)
  blur (radius)           img.filter(ImageFilter.GaussianBlur(radius))
  photometric (brightness, contrast, saturation, hue, grayscale, blur_radius; each optional/null)
                          the release's transform_inv order
  resize (width, height)  img.resize((width, height), Image.BILINEAR)
  base (side)             the release's BaseTransform: TF.resize(img, side) + centre crop
  crop_resize_flip (crop_frac, u_x, u_y, flip, out)
                          the release's crop box on a square image, crop, resize (BILINEAR), hflip
  hflip ()                TF.hflip
  to_tensor ()            ToTensor + Normalize(ImageNet mean/std)   (needs torch)

Only Pillow is required: without torchvision, the torchvision PIL functional ops are replayed
with the same PIL calls (torchvision's PIL path is a thin wrapper around them).
Exit status 77 when Pillow is missing (the Rust test then skips).
"""
import json
import sys
from pathlib import Path

try:
    import numpy as np
    import PIL
    from PIL import Image, ImageEnhance, ImageFilter
except ImportError as e:  # pragma: no cover
    print(f"missing Python package ({e}); pip install pillow numpy", file=sys.stderr)
    sys.exit(77)

try:
    import torchvision.transforms.functional as TF

    HAVE_TV = True
except Exception:  # torchvision missing or broken: PIL replay below
    HAVE_TV = False


def brightness(img, f):
    if HAVE_TV:
        return TF.adjust_brightness(img, f)
    return ImageEnhance.Brightness(img).enhance(f)


def contrast(img, f):
    if HAVE_TV:
        return TF.adjust_contrast(img, f)
    return ImageEnhance.Contrast(img).enhance(f)


def saturation(img, f):
    if HAVE_TV:
        return TF.adjust_saturation(img, f)
    return ImageEnhance.Color(img).enhance(f)


def hue(img, h):
    if HAVE_TV:
        return TF.adjust_hue(img, h)
    # torchvision's _functional_pil.adjust_hue, verbatim.
    hh, s, v = img.convert("HSV").split()
    np_h = np.array(hh, dtype=np.uint8)
    np_h += np.int32(h * 255).astype(np.uint8)
    hh = Image.fromarray(np_h, "L")
    return Image.merge("HSV", (hh, s, v)).convert("RGB")


def grayscale(img):
    if HAVE_TV:
        return TF.rgb_to_grayscale(img, num_output_channels=3)
    g = np.array(img.convert("L"))
    return Image.fromarray(np.dstack([g, g, g]), "RGB")


def blur(img, r):
    return img.filter(ImageFilter.GaussianBlur(radius=r))


def photometric(img, c):
    # The release's transform_inv order; null/absent/false means not applied.
    if c.get("brightness") is not None:
        img = brightness(img, c["brightness"])
    if c.get("contrast") is not None:
        img = contrast(img, c["contrast"])
    if c.get("saturation") is not None:
        img = saturation(img, c["saturation"])
    if c.get("hue") is not None:
        img = hue(img, c["hue"])
    if c.get("grayscale"):
        img = grayscale(img)
    if c.get("blur_radius") is not None:
        img = blur(img, c["blur_radius"])
    return img


def base(img, side):
    # The release's BaseTransform (data/custom_transforms.py).
    w, h = img.size
    if w <= h:
        size = (side, int(side * h / w))
    else:
        size = (int(side * w / h), side)
    img = img.resize(size, Image.BILINEAR)
    w, h = img.size
    left = int(round((w - side) / 2.0))
    top = int(round((h - side) / 2.0))
    return img.crop((left, top, left + side, top + side))


def crop_box(side, frac, u):
    # The release's RandomResizedCrop.random_crop box.
    size = int(frac * side)
    size = min(max(size, 1), side)
    return int(round((side - size) * u)), size


def crop_resize_flip(img, c):
    w, h = img.size
    x0, sw = crop_box(w, c["crop_frac"], c["u_x"])
    y0, sh = crop_box(h, c["crop_frac"], c["u_y"])
    out = c["out"]
    img = img.crop((x0, y0, x0 + sw, y0 + sh)).resize((out, out), Image.BILINEAR)
    if c["flip"]:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return img


def to_tensor(img):
    import torch  # noqa: F401  (only this op needs torch)
    from torchvision import transforms

    t = transforms.ToTensor()(img)
    t = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])(t)
    return t.numpy().astype("<f4")


def run(img, c):
    op = c["op"]
    if op == "brightness":
        return brightness(img, c["factor"])
    if op == "contrast":
        return contrast(img, c["factor"])
    if op == "saturation":
        return saturation(img, c["factor"])
    if op == "hue":
        return hue(img, c["hue"])
    if op == "grayscale":
        return grayscale(img)
    if op == "blur":
        return blur(img, c["radius"])
    if op == "photometric":
        return photometric(img, c)
    if op == "resize":
        return img.resize((c["width"], c["height"]), Image.BILINEAR)
    if op == "base":
        return base(img, c["side"])
    if op == "crop_resize_flip":
        return crop_resize_flip(img, c)
    if op == "hflip":
        return TF.hflip(img) if HAVE_TV else img.transpose(Image.FLIP_LEFT_RIGHT)
    if op == "to_tensor":
        return to_tensor(img)
    raise ValueError(f"unknown op {op!r}")


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    src, cases, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    img = Image.open(src).convert("RGB")
    versions = {"pillow": PIL.__version__, "torchvision": None}
    if HAVE_TV:
        import torchvision

        versions["torchvision"] = torchvision.__version__
    (out / "versions.json").write_text(json.dumps(versions))
    for c in json.loads(cases.read_text()):
        try:
            res = run(img, c)
        except ImportError as e:  # to_tensor without torch: leave the case out
            print(f"{c['name']}: skipped ({e})", file=sys.stderr)
            continue
        if isinstance(res, np.ndarray):
            (out / f"{c['name']}.f32").write_bytes(res.tobytes())
        else:
            res.convert("RGB").save(out / f"{c['name']}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
