"""The one definition of image preprocessing (README: The bundle).

Training, feature caching, calibration, validation and the device all call these functions, so what a model sees
is identical everywhere by construction. Everything here is numpy only.

The contract with the exported graph: images become **uint8, NHWC, RGB at the model's input size** here; scaling to
[0, 1], mean/std normalisation and the NHWC->NCHW layout change happen inside the model graph
(`normalize` below is the numpy reference of that in-graph step).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import InputError
from .options import max_image_pixels  # the one limit, shared with video frames

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
# How the crop is resized (`runtimes.resample`): the name is part of the definition a run trains with and its bundles
# record; each is integer arithmetic, so it gives the same bytes on every CPU.
RESIZES = {
    "pillow": "Pillow's antialiased convolution with the interpolation filter (default; Pillow, or its numpy twin)",
    "opencv-exact": "OpenCV, for camera frames: the crop halved by 2x2 averages while it is twice the input or more, then "
    "INTER_LINEAR_EXACT to the input size; several times faster (needs the [video] extra on host and device)",
}


MAX_INPUT_SIDE = 8192  # pixels per side of a model input; larger ones are refused as malformed


@dataclass(frozen=True)
class PreprocessConfig:
    """How a raw image becomes the model's input tensor.

    input_size: (height, width) the model takes.
    interpolation: resampling filter, antialiased when shrinking ("nearest", "bilinear", "bicubic").
    crop_pct: the centre crop's share of the resized image (timm's convention); 1.0 keeps the whole shorter side.
    mean / std: per-channel normalisation of [0, 1] RGB values, applied inside the graph.
    resize: how the crop is resized, one of `RESIZES` ("opencv-exact" is bilinear, whole-pixel crop boxes).
    jpeg_draft: JPEG files decode at a reduced size where the crop region keeps at least twice the input's pixels
    per side (`draft_scale`); part of the definition, so training, the export and the device read the same pixels.
    """

    input_size: tuple[int, int] = (224, 224)
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    colour_order: str = "RGB"
    layout: str = "NHWC"
    dtype: str = "uint8"
    normalize_in_graph: bool = True
    jpeg_draft: bool = False  # JPEG files much larger than the input decode at 1/2, 1/4 or 1/8 size (`draft_scale`)
    resize: str = "pillow"  # one of RESIZES
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in self.input_size):
            raise InputError(f"preprocessing.input_size must be two whole numbers (height, width), got {self.input_size!r}")
        size = tuple(int(s) for s in self.input_size)
        if len(size) != 2 or min(size) < 1 or max(size) > MAX_INPUT_SIDE:
            raise InputError(f"preprocessing.input_size must be two ints from 1 to {MAX_INPUT_SIDE} (height, width), got {self.input_size!r}")
        object.__setattr__(self, "input_size", size)
        if self.interpolation not in INTERPOLATIONS:
            raise InputError(f"preprocessing.interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.resize not in RESIZES:
            raise InputError(f"preprocessing.resize must be one of {', '.join(RESIZES)}, got {self.resize!r}")
        if self.resize != "pillow" and self.interpolation != "bilinear":
            raise InputError(f"preprocessing.resize {self.resize} resizes bilinearly; interpolation must be 'bilinear', got {self.interpolation!r}")
        if isinstance(self.crop_pct, bool) or not isinstance(self.crop_pct, (int, float)) or not 0.0 < float(self.crop_pct) <= 1.0:
            raise InputError(f"preprocessing.crop_pct must be in (0, 1], got {self.crop_pct!r}")
        for name in ("mean", "std"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) != 3 or not all(math.isfinite(v) for v in values):
                raise InputError(f"preprocessing.{name} must be three finite numbers, got {getattr(self, name)!r}")
            object.__setattr__(self, name, values)
        if any(v <= 0 for v in self.std):
            raise InputError(f"preprocessing.std must be positive, got {self.std!r}")
        if self.colour_order != "RGB" or self.layout != "NHWC" or self.dtype != "uint8":
            raise InputError("only uint8 NHWC RGB model inputs are supported")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        if not d["extra"]:
            d.pop("extra")
        if not d["jpeg_draft"]:  # bundles and caches from before it, and bundles without it, read as they always did
            d.pop("jpeg_draft")
        if d["resize"] == "pillow":  # likewise: the only resize before the field
            d.pop("resize")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"preprocessing has unknown field(s): {', '.join(sorted(unknown))}")
        kw = dict(d)
        for key in ("input_size", "mean", "std"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)

    def with_size(self, size: int | Sequence[int]) -> PreprocessConfig:
        hw = (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
        d = self.to_dict()
        d["input_size"] = hw
        return PreprocessConfig.from_dict(d)


# --------------------------------------------------------------------------------------------- pixel formats


def to_rgb_uint8(image: Any, *, what: str = "image") -> np.ndarray:
    """Convert a decoded image array to HxWx3 uint8 RGB.

    Accepts HxW (grey), HxWx1, HxWx3 (RGB) or HxWx4 (RGBA, alpha dropped); uint8, uint16 (scaled down), bool, or
    float in [0, 1]. Anything else raises `InputError` naming `what`.
    """
    try:
        arr = np.asarray(image)
    except (ValueError, TypeError) as exc:  # ragged nested lists, objects numpy cannot make an array of
        raise InputError(f"{what}: not an image array ({exc})") from None
    if arr.dtype == object:
        raise InputError(f"{what}: not an image array (ragged or mixed-type nested lists)")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise InputError(f"{what}: expected an image of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
    h, w, c = arr.shape
    if h < 1 or w < 1:
        raise InputError(f"{what}: image is empty (shape {arr.shape})")
    if c not in (1, 3, 4):
        raise InputError(f"{what}: expected 1, 3 or 4 channels (grey, RGB, RGBA), got {c} in shape {arr.shape}")
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.uint16:
        out = (arr >> 8).astype(np.uint8)
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{what}: float image contains NaN or infinity")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise InputError(f"{what}: float images must hold values in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
        out = np.rint(arr * 255.0).astype(np.uint8)
    else:
        raise InputError(f"{what}: unsupported pixel dtype {arr.dtype} (use uint8, uint16, bool or float in [0, 1])")
    if c == 1:
        out = np.repeat(out, 3, axis=2)
    elif c == 4:
        out = out[:, :, :3]
    return np.ascontiguousarray(out)


# --------------------------------------------------------------------------------------------- resampling


def crop_box(height: int, width: int, cfg: PreprocessConfig) -> tuple[float, float, float, float]:
    """The centre crop in source pixels (x0, y0, x1, y1): the region whose shorter side, scaled to the target,
    covers the target / crop_pct."""
    th, tw = cfg.input_size
    scale = max(th / height, tw / width) / cfg.crop_pct  # output pixels per source pixel
    span_y, span_x = th / scale, tw / scale
    y0, x0 = (height - span_y) / 2.0, (width - span_x) / 2.0
    return max(0.0, x0), max(0.0, y0), min(float(width), x0 + span_x), min(float(height), y0 + span_y)


def resize_and_crop(image: np.ndarray, cfg: PreprocessConfig, *, engine: str = "auto") -> np.ndarray:
    """Centre-crop and resize an HxWx3 uint8 image to `cfg.input_size` in one resampling step (runtimes.resample).

    engine: "auto" (Pillow's C code where installed, else the numpy twin), "pillow" or "numpy"; all give the
    same pixels. Returns HxWx3 uint8.
    """
    from . import resample

    th, tw = cfg.input_size
    h, w = image.shape[:2]
    if (h, w) == (th, tw) and cfg.crop_pct == 1.0:
        return image
    box = crop_box(h, w, cfg)
    if cfg.resize == "opencv-exact":
        return resample.opencv_exact_resize(image, (th, tw), box)
    if cfg.interpolation == "nearest":
        return resample.nearest_resize(image, (th, tw), box)
    if engine == "auto":
        engine = "pillow" if resample.have_pillow() else "numpy"
    fn = resample.pillow_resize if engine == "pillow" else resample.numpy_resize
    return fn(image, (th, tw), box, cfg.interpolation)


# --------------------------------------------------------------------------------------------- public entry points


def prepare_image(image: Any, cfg: PreprocessConfig, *, what: str = "image") -> np.ndarray:
    """Any decoded image -> HxWx3 uint8 RGB at the model's input size (a writable array: torch.from_numpy warns on a
    read-only one, such as an image already at the input size decoded by Pillow)."""
    out = resize_and_crop(to_rgb_uint8(image, what=what), cfg)
    return out if out.flags.writeable else out.copy()


def prepare_batch(images: Iterable[Any], cfg: PreprocessConfig) -> np.ndarray:
    """A sequence of images of any sizes -> (N, H, W, 3) uint8 batch."""
    batch = [prepare_image(img, cfg, what=f"image {i}") for i, img in enumerate(images)]
    if not batch:
        raise InputError("empty batch: at least one image is needed")
    return np.stack(batch)


def normalize(batch: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Numpy reference of the in-graph step: uint8 NHWC -> float32 NCHW, scaled to [0, 1] and mean/std-normalised."""
    x: np.ndarray = batch.astype(np.float32) / 255.0
    x = (x - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _int_image(arr: np.ndarray, path: str) -> np.ndarray:
    """32-bit integer images by their range: 8-bit or 16-bit values as such, anything else refused."""
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > 65535:
        raise InputError(f"{path}: 32-bit integer image with values {lo}..{hi}; expected 0..255 or 0..65535 (convert it to 8 or 16 bits)")
    return arr.astype(np.uint8) if hi <= 255 else arr.astype(np.uint16)


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".npy")


def image_files(folder: str | os.PathLike[str], *, recursive: bool = True) -> list[str]:
    """The image files in a folder (sorted; hidden files and other suffixes left out; sub-folders too when `recursive`)."""
    from pathlib import Path

    root = Path(folder)
    found = root.rglob("*") if recursive else root.iterdir()
    return sorted(
        str(p)
        for p in found
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def expand_image_paths(paths: list[str], *, recursive: bool = True) -> list[str]:
    """Image files as given, with each folder replaced by the image files in it (sorted; hidden files and other
    suffixes left out; sub-folders too when `recursive`) and each glob pattern (`*`, `?`, `[`) that names no file
    by the files it matches. A folder or pattern without images is an InputError naming it."""
    import glob
    from pathlib import Path

    out: list[str] = []
    for path in paths:
        if not os.path.exists(path) and any(c in path for c in "*?["):
            matches = sorted(glob.glob(path, recursive=recursive))
            if not matches:
                raise InputError(f"{path}: no file matches this pattern")
            out.extend(expand_image_paths(matches, recursive=recursive))  # matched folders stand for their images
            continue
        if not Path(path).is_dir():
            out.append(path)
            continue
        found = image_files(path, recursive=recursive)
        if not found:
            hint = "" if recursive or not any(p.is_dir() for p in Path(path).iterdir()) else "; its sub-folders are read with --recursive"
            raise InputError(f"{path}: a folder with no image files ({', '.join(IMAGE_EXTENSIONS)}){hint}")
        out.extend(found)
    return out


DRAFT_MARGIN = 2.0  # a reduced JPEG decode keeps the crop region at least this many times the input per side
EXIF_ORIENTATION = 0x0112


def draft_scale(width: int, height: int, orientation: int, cfg: PreprocessConfig) -> int:
    """The JPEG decoding scale (1, 2, 4 or 8: the image decodes at 1/scale per side) for a `width` x `height` file
    (as stored; EXIF `orientation` 5-8 turns it) under `cfg`: the largest at which the centre crop still has
    `DRAFT_MARGIN` times the input's pixels on both sides. 1 (a full decode) unless `cfg.jpeg_draft`."""
    if not cfg.jpeg_draft:
        return 1
    oh, ow = (width, height) if orientation in (5, 6, 7, 8) else (height, width)
    x0, y0, x1, y1 = crop_box(oh, ow, cfg)
    th, tw = cfg.input_size
    room = min((y1 - y0) / (DRAFT_MARGIN * th), (x1 - x0) / (DRAFT_MARGIN * tw))
    return next(s for s in (8, 4, 2, 1) if s <= room or s == 1)


def _decode_reduced(im: Any, cfg: PreprocessConfig, path: str) -> None:
    """Ask libjpeg for the reduced decode `draft_scale` chose (before `load`); checked, never a silent other scale."""
    w, h = im.size
    scale = draft_scale(w, h, int(im.getexif().get(EXIF_ORIENTATION, 1)), cfg)
    if scale == 1:
        return
    im.draft(None, (w // scale, h // scale))
    if im.size != (-(-w // scale), -(-h // scale)):
        raise InputError(f"{path}: this Pillow decoded the JPEG at {im.size}, not at 1/{scale} of {w}x{h} as the bundle's preprocessing defines")


def read_image(path: str, preprocessing: PreprocessConfig | None = None) -> np.ndarray:
    """Decode an image file to an array. `.npy` needs numpy only; other formats need Pillow. With `preprocessing`
    whose `jpeg_draft` is on, a JPEG much larger than the input decodes at a reduced size (`draft_scale`)."""
    import os

    if os.path.isdir(path):
        raise InputError(f"{path}: a folder, not an image file")
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such image file")
    if path.lower().endswith(".npy"):
        try:
            return np.load(path, allow_pickle=False)
        except Exception as exc:  # numpy raises several types for bad files
            raise InputError(f"{path}: not a readable .npy array ({exc})") from None
    try:
        from PIL import Image, ImageOps, UnidentifiedImageError
    except ImportError:
        raise InputError(f"{path}: decoding image files needs Pillow (pip install pillow); .npy arrays work without it") from None
    limit = max_image_pixels()
    try:
        with warnings.catch_warnings():  # Pillow warns about large images; the limit below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im: Image.Image = Image.open(path)
        with im:
            w, h = im.size
            if w * h > limit:  # checked before decoding: a small file can expand to gigabytes
                raise InputError(
                    f"{path}: {w}x{h} pixels is more than this device accepts ({limit}; set EDGE_TRANSFER_MAX_IMAGE_PIXELS to change it)"
                )
            if preprocessing is not None and preprocessing.jpeg_draft and im.format == "JPEG":
                _decode_reduced(im, preprocessing, path)
            im.load()
            im = ImageOps.exif_transpose(im)  # as the camera held it: the same in training and on the device
            if im.mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(im, dtype=np.uint16)
            if im.mode == "F":  # float images: values in [0, 1] are accepted, others refused by to_rgb_uint8
                return np.asarray(im, dtype=np.float32)
            if im.mode in ("I", "I;32"):
                return _int_image(np.asarray(im, dtype=np.int64), path)
            if im.mode not in ("RGB", "L", "RGBA"):
                im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
            return np.asarray(im)
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError(f"{path}: refused as a decompression bomb ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: not a readable image ({exc})") from None


def synthetic_images(count: int, size: tuple[int, int] = (480, 640), seed: int = 0) -> list[np.ndarray]:
    """Decoded-looking RGB images (smooth gradients plus noise) at a camera-like size, for end-to-end runs."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    images = []
    for _ in range(count):
        base = np.stack([(xx * rng.uniform(0.1, 0.5) + yy * rng.uniform(0.1, 0.5) + rng.uniform(0, 255)) % 256 for _ in range(3)], -1)
        images.append(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
    return images
