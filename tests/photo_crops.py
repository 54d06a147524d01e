"""Open-set data the models never saw: crops of skimage's photos, one class per photo, with enrolment and training
crops from one part of each photo and queries from another (tests/test_open_set.py, benchmarks/open_set.py).

    root/train/<photo>/   crops from the left half of each known photo (a classifier trains on these)
    root/enrol/<photo>/   5 of those crops per known photo (a gallery enrols these)
    root/query/<photo>/   crops from the right half of each known photo
    root/query/unknown/   crops of the photos never taught or enrolled
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "retina",
    "hubble_deep_field",
    "camera",
    "brick",
    "grass",
    "gravel",
    "moon",
    "text",
    "clock",
    "page",
    "coins",
    "horse",
    "cell",
    "logo",
    "colorwheel",
)


def photo(name: str) -> np.ndarray:
    """A skimage photo as RGB uint8."""
    from skimage import data

    from runtimes.preprocess import to_rgb_uint8

    img = getattr(data, name)()
    return to_rgb_uint8(img.astype(np.uint8) * 255 if img.dtype == bool else img)


def _crop(img: np.ndarray, part: str, rng: np.random.Generator, size: int = 160) -> Any:
    """A square crop, 30-50% of the shorter side, from the left half, the right half or anywhere, as a `size` px
    Pillow image (as a camera would deliver it)."""
    from PIL import Image

    h, w = img.shape[:2]
    side = int(rng.uniform(0.3, 0.5) * min(h, w))
    lo, hi = {"left": (0, w // 2 - side), "right": (w // 2, w - side), "any": (0, w - side)}[part]
    x, y = int(rng.integers(lo, max(lo, hi) + 1)), int(rng.integers(0, h - side + 1))
    return Image.fromarray(np.ascontiguousarray(img[y : y + side, x : x + side])).resize((size, size), Image.BICUBIC)


def split_photos(seed: int, known: int = 12) -> tuple[list[str], list[str]]:
    """(known, never) photo names: a seeded split of `PHOTOS`."""
    order = [PHOTOS[i] for i in np.random.default_rng(seed).permutation(len(PHOTOS))]
    return sorted(order[:known]), sorted(order[known:])


def write_photo_crops(root: Path, known: list[str], never: list[str], *, train: int = 20, shots: int = 5, queries: int = 15, seed: int = 0) -> Path:
    """Write the layout above (JPEG files) and return `root`."""
    rng = np.random.default_rng(seed)
    for name in known:
        img = photo(name)
        for i in range(train):
            crop = _crop(img, "left", rng)
            for part in ("train", "enrol") if i < shots else ("train",):
                (root / part / name).mkdir(parents=True, exist_ok=True)
                crop.save(root / part / name / f"{i:02d}.jpg", quality=90)
        (root / "query" / name).mkdir(parents=True, exist_ok=True)
        for i in range(queries):
            _crop(img, "right", rng).save(root / "query" / name / f"{i:02d}.jpg", quality=90)
    (root / "query" / "unknown").mkdir(parents=True, exist_ok=True)
    for name in never:
        img = photo(name)
        for i in range(queries):
            _crop(img, "any", rng).save(root / "query" / "unknown" / f"{name}-{i:02d}.jpg", quality=90)
    return root
