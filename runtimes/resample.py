"""Antialiased resize with a crop box: the arithmetic every model input goes through (README: The bundle).

The definition is two separable passes, **horizontal first (on the rows the vertical pass reads), then vertical**,
each Pillow's 8-bit convolution (`ImagingResampleHorizontal_8bpc` / `..._Vertical_8bpc`): filter weights widened by
the shrink factor (antialias), normalised, turned into 22-bit fixed point, summed with rounding and clipped to uint8
after each pass. The crop box is given in float32, as Pillow takes it. Each pass is a separate one-axis
`Image.resize` call, so the result does not depend on which pass order a Pillow version prefers for a two-axis
resize.

Two implementations compute it:
- `pillow_resize`: Pillow's C code (3.4 ms bilinear, 4.6 ms bicubic for a 480x640 frame to 224x224 on one
  2.5 GHz Xeon core; `benchmarks/end_to_end.py`);
- `numpy_resize`: a numpy twin of the same integer arithmetic, bit-identical (tests/test_preprocess.py checks it
  on 121 random sizes, crop boxes and both filters), for devices without Pillow.

`nearest` is not Pillow's: it is a plain gather of the source pixel under each output pixel's centre.
"""

from __future__ import annotations

import numpy as np

SUPPORT = {"bilinear": 1.0, "bicubic": 2.0}
PRECISION_BITS = 22  # Pillow's 32 - 8 - 2

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in source pixels, as Image.resize takes it


def _filter(name: str, x: np.ndarray) -> np.ndarray:
    """Pillow's bilinear (triangle) and bicubic (Keys, a = -0.5) filters, in its order of operations."""
    x = np.abs(x)
    if name == "bilinear":
        return np.where(x < 1.0, 1.0 - x, 0.0)
    a = -0.5
    return np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1, np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def coefficients(in_size: int, in0: float, in1: float, out_size: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`: per output pixel, the source indices and the 22-bit
    fixed-point weights (both (out_size, taps); unused taps have weight 0 and a valid index)."""
    lo, hi = np.float32(in0), np.float32(in1)
    scale = float(np.float32(hi - lo)) / out_size
    filterscale = max(scale, 1.0)
    support = SUPPORT[name] * filterscale
    ksize = int(np.ceil(support)) * 2 + 1
    center = float(lo) + (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    count = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize)
    w = _filter(name, ((taps[None, :] + xmin[:, None]) - center[:, None] + 0.5) * (1.0 / filterscale))
    w = np.where(taps[None, :] < count[:, None], w, 0.0)
    total = np.zeros(out_size)
    for k in range(ksize):  # summed in Pillow's order, so the normalised weights round the same way
        total = total + w[:, k]
    w = np.where(total[:, None] != 0.0, w / np.where(total == 0.0, 1.0, total)[:, None], w)
    fixed = np.trunc(np.where(w < 0, -0.5 + w * (1 << PRECISION_BITS), 0.5 + w * (1 << PRECISION_BITS))).astype(np.int32)
    index = np.minimum(xmin[:, None] + taps[None, :], in_size - 1)
    return index, fixed


def _convolve(img: np.ndarray, index: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """One pass over uint8 (H, W, C) along `axis` (1: horizontal, 0: vertical), rounded and clipped to uint8."""
    shape = list(img.shape)
    shape[axis] = index.shape[0]
    acc = np.full(shape, 1 << (PRECISION_BITS - 1), np.int32)  # fits: Pillow accumulates in a C int too
    for t in range(index.shape[1]):
        if axis == 1:
            acc += img[:, index[:, t]].astype(np.int32) * weights[None, :, t, None]
        else:
            acc += img[index[:, t]].astype(np.int32) * weights[:, t, None, None]
    return np.clip(acc >> PRECISION_BITS, 0, 255).astype(np.uint8)


def _passes(shape: tuple[int, ...], size: tuple[int, int], box: Box) -> tuple[bool, bool]:
    """Which passes change anything (Pillow's need_horizontal / need_vertical, with the box in float32)."""
    (h, w), (th, tw) = shape[:2], size
    x0, y0, x1, y1 = (np.float32(v) for v in box)
    return bool(tw != w or x0 != 0 or x1 != tw), bool(th != h or y0 != 0 or y1 != th)


def _rows(h: int, y0: float, y1: float, th: int, name: str) -> tuple[int, int, float, float]:
    """The source rows the vertical pass reads, [first, last), and its box edges relative to `first` (exact in
    float32: a whole number subtracted from a float32 below 2**24). The horizontal pass runs on these rows only,
    as Pillow's own two-axis resize does."""
    lo, hi = float(np.float32(y0)), float(np.float32(y1))
    scale = float(np.float32(hi - lo)) / th
    support = SUPPORT[name] * max(scale, 1.0)
    first = max(int(np.trunc(lo + 0.5 * scale - support + 0.5)), 0)
    last = min(int(np.trunc(lo + (th - 0.5) * scale + support + 0.5)), h)
    return first, last, lo - first, hi - first


def numpy_resize(image: np.ndarray, size: tuple[int, int], box: Box, name: str) -> np.ndarray:
    """The definition in numpy: uint8 (H, W, 3) -> uint8 (size[0], size[1], 3), bit-identical to `pillow_resize`."""
    (h, w), (th, tw) = image.shape[:2], size
    horizontal, vertical = _passes(image.shape, size, box)
    first, last, y0, y1 = _rows(h, box[1], box[3], th, name) if vertical else (0, h, box[1], box[3])
    out = image[first:last]
    if horizontal:
        out = _convolve(out, *coefficients(w, box[0], box[2], tw, name), axis=1)
    if vertical:
        out = _convolve(out, *coefficients(last - first, y0, y1, th, name), axis=0)
    return np.ascontiguousarray(out)


def pillow_resize(image: np.ndarray, size: tuple[int, int], box: Box, name: str) -> np.ndarray:
    """The definition through Pillow's C code: one single-axis `Image.resize` per pass.

    (Splitting each pass into bands on two threads gives the same pixels, but measured slower next to a loaded
    OpenVINO model, whose worker threads keep the cores busy after each inference.)
    """
    from PIL import Image

    h, (th, tw) = image.shape[0], size
    horizontal, vertical = _passes(image.shape, size, box)
    first, last, y0, y1 = _rows(h, box[1], box[3], th, name) if vertical else (0, h, box[1], box[3])
    flt = Image.Resampling.BILINEAR if name == "bilinear" else Image.Resampling.BICUBIC
    im = Image.fromarray(image[first:last])
    if horizontal:
        im = im.resize((tw, last - first), flt, box=(box[0], 0, box[2], last - first))
    if vertical:
        im = im.resize((tw, th), flt, box=(0, y0, tw, y1))
    return np.array(im)  # a writable copy (np.asarray of an Image is read-only)


def nearest_resize(image: np.ndarray, size: tuple[int, int], box: Box) -> np.ndarray:
    """The source pixel under each output pixel's centre."""
    (h, w), (th, tw) = image.shape[:2], size
    ys = np.clip(np.floor(box[1] + (np.arange(th) + 0.5) * ((box[3] - box[1]) / th)).astype(np.int64), 0, h - 1)
    xs = np.clip(np.floor(box[0] + (np.arange(tw) + 0.5) * ((box[2] - box[0]) / tw)).astype(np.int64), 0, w - 1)
    return np.ascontiguousarray(image[ys][:, xs])


def whole_pixel_box(box: Box) -> tuple[int, int, int, int]:
    """The crop box rounded to whole pixels (halves up), for resizes that take no sub-pixel box."""
    x0, y0, x1, y1 = (int(np.floor(v + 0.5)) for v in box)
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def opencv_exact_resize(image: np.ndarray, size: tuple[int, int], box: Box) -> np.ndarray:
    """The `opencv-exact` definition: crop at whole pixels; while the crop is at least twice the output on both
    sides, drop an odd last row or column and average 2x2 blocks (OpenCV's INTER_AREA at exactly 1/2: integer sums,
    `(sum + 2) >> 2`); then INTER_LINEAR_EXACT (fixed-point bilinear, bit-exact by OpenCV's own test) to `size`.
    Only whole halvings: INTER_AREA at other factors rounds ties differently from path to path."""
    from .video import opencv

    cv2 = opencv()
    th, tw = size
    x0, y0, x1, y1 = whole_pixel_box(box)
    crop = image[y0:y1, x0:x1]
    while crop.shape[0] >= 2 * th and crop.shape[1] >= 2 * tw:
        h2, w2 = crop.shape[0] // 2, crop.shape[1] // 2
        crop = cv2.resize(crop[: 2 * h2, : 2 * w2], (w2, h2), interpolation=cv2.INTER_AREA)
    if crop.shape[:2] != (th, tw):
        crop = cv2.resize(crop, (tw, th), interpolation=cv2.INTER_LINEAR_EXACT)
    return np.ascontiguousarray(crop)


def halve(crop: np.ndarray) -> np.ndarray:
    """The numpy twin of one halving: 2x2 blocks of uint8 (H, W, C) averaged as `(sum + 2) >> 2` (an odd last row
    or column dropped)."""
    h, w = crop.shape[0] // 2, crop.shape[1] // 2
    sums = crop[: 2 * h, : 2 * w].reshape(h, 2, w, 2, -1).astype(np.int32).sum(axis=(1, 3))
    return ((sums + 2) >> 2).astype(np.uint8).reshape(h, w, *crop.shape[2:])


def linear_exact(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The numpy twin of OpenCV's INTER_LINEAR_EXACT on uint8 (H, W, C), after the reference in OpenCV's own test
    (`Resize_Bitexact.Linear8U`): per axis, source position `(1 / (out / in)) * (i + 0.5) - 0.5` in double precision,
    its floor and the fraction rounded (half to even) to 8 bits; both neighbours clamped to the image; the four
    products summed in integers and rounded once at 16 bits."""
    (h, w), (th, tw) = image.shape[:2], size

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        scale = 1.0 / (n_out / n_in)
        pos = scale * (np.arange(n_out, dtype=np.float64) + 0.5) - 0.5
        first = np.floor(pos)
        far = np.rint((pos - first) * 256.0).astype(np.int64)
        first_i = first.astype(np.int64)
        return np.clip(first_i, 0, n_in - 1), np.clip(first_i + 1, 0, n_in - 1), 256 - far, far

    y_lo, y_hi, y_near, y_far = axis(h, th)
    x_lo, x_hi, x_near, x_far = axis(w, tw)
    img = image.astype(np.int64)

    def across(rows: np.ndarray) -> np.ndarray:
        return rows[:, x_lo] * x_near[None, :, None] + rows[:, x_hi] * x_far[None, :, None]

    value = across(img[y_lo]) * y_near[:, None, None] + across(img[y_hi]) * y_far[:, None, None]
    return np.clip((value + (1 << 15)) >> 16, 0, 255).astype(np.uint8)


def numpy_opencv_exact(image: np.ndarray, size: tuple[int, int], box: Box) -> np.ndarray:
    """`opencv_exact_resize` in numpy alone (`halve`, then `linear_exact`): the test oracle that pins the definition
    down independently of OpenCV's SIMD paths."""
    x0, y0, x1, y1 = whole_pixel_box(box)
    crop = image[y0:y1, x0:x1]
    while crop.shape[0] >= 2 * size[0] and crop.shape[1] >= 2 * size[1]:
        crop = halve(crop)
    if crop.shape[:2] != size:
        crop = linear_exact(crop, size)
    return np.ascontiguousarray(crop)


def have_pillow() -> bool:
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        return False
    return True
