"""Datasets: an image folder (one sub-folder per class), in-memory arrays, and the built-in `digits`.

A dataset is a list of items (file paths or arrays) with integer targets and class names. Images are decoded and
prepared lazily with the one shared preprocessing (`runtimes.preprocess`). Splits are stratified and seeded.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.errors import DatasetError, InputError
from runtimes.labels import check_labels
from runtimes.preprocess import IMAGE_EXTENSIONS, PreprocessConfig, prepare_image, read_image

from .config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class ImageDataset:
    """Items (paths or arrays), integer targets and class names, in a fixed order."""

    name: str
    classes: list[str]
    items: list[Any]
    targets: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    def describe_item(self, i: int) -> str:
        item = self.items[i]
        return str(item) if isinstance(item, (str, Path)) else f"{self.name}[{i}]"

    def load(self, i: int, preprocessing: PreprocessConfig | None = None) -> np.ndarray:
        """Decode item i (raises DatasetError naming the file); with `preprocessing`, as its definition decodes
        (`jpeg_draft`: a large JPEG at a reduced size, as the device will)."""
        item = self.items[i]
        if isinstance(item, (str, Path)):
            try:
                return read_image(str(item), preprocessing)
            except InputError as exc:
                raise DatasetError(f"{exc}; fix or remove it (--skip-bad leaves unreadable images out)") from None
        return item

    def prepared(self, i: int, cfg: PreprocessConfig) -> np.ndarray:
        try:
            return prepare_image(self.load(i, cfg), cfg, what=self.describe_item(i))
        except InputError as exc:
            raise DatasetError(str(exc)) from None

    def prepared_batch(self, indices: Sequence[int], cfg: PreprocessConfig) -> np.ndarray:
        return np.stack([self.prepared(int(i), cfg) for i in indices])

    def fingerprint(self) -> str:
        """Hash of the class names, targets and item identities (file paths+sizes+mtimes, or array bytes)."""
        h = hashlib.sha256()
        h.update(repr(self.classes).encode())
        h.update(np.asarray(self.targets, np.int64).tobytes())
        for item in self.items:
            if isinstance(item, (str, Path)):
                st = os.stat(item)
                h.update(f"{item}|{st.st_size}|{st.st_mtime_ns}".encode())
            else:
                h.update(np.ascontiguousarray(item).tobytes())
        return h.hexdigest()

    def subset(self, keep: Sequence[int]) -> ImageDataset:
        keep = list(keep)
        return ImageDataset(self.name, self.classes, [self.items[i] for i in keep], self.targets[keep], dict(self.info))


# ------------------------------------------------------------------------------------------------ sources


def load_digits_dataset() -> ImageDataset:
    """scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels) as uint8 RGB images, classes '0'..'9'.

    Rendered as dark ink on white paper (the way a photographed digit looks), not as a bright stroke on black.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    images = 255 - np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)
    items = [np.repeat(img[:, :, None], 3, axis=2) for img in images]
    return ImageDataset(
        "digits",
        [str(i) for i in range(10)],
        items,
        d.target.astype(np.int64),
        {"kind": "builtin", "name": "digits", "source": "sklearn.datasets.load_digits", "license": "CC BY 4.0 (UCI)"},
    )


def load_image_folder(root: str | os.PathLike[str], *, skip_bad: bool = False) -> ImageDataset:
    """One sub-folder per class, sorted by name. Non-image files are ignored (counted); every image is checked.

    Every image is decoded once before any work (JPEGs at 1/8 scale), so every unreadable file is named at once:
    a DatasetError lists them, unless `skip_bad` leaves them out (and a class folder left with none) with a warning.
    """
    root_p = Path(root)
    if not root_p.is_dir():
        raise DatasetError(f"{root_p}: no such dataset directory")
    real_root = Path(os.path.realpath(root_p))
    links = SkippedLinks()
    class_dirs = sorted(p for p in root_p.iterdir() if p.is_dir() and not p.name.startswith(".") and not links.skip(p, real_root))
    if len(class_dirs) < 2:
        raise DatasetError(f"{root_p}: needs at least 2 class sub-folders (one per class), found {len(class_dirs)}")
    check_labels([d.name for d in class_dirs], where="class folder")
    items: list[str] = []
    targets: list[int] = []
    ignored = 0
    bad: list[str] = []
    empty: list[str] = []
    found: list[tuple[Path, list[Path]]] = []
    for cdir in class_dirs:  # the pre-scan: every file judged before any work
        files = _files_under(cdir, real_root, links)
        images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
        ignored += len(files) - len(images)
        good = []
        for p in images:
            problem = _check_image(p, decode=True)
            if problem is None:
                good.append(p)
            else:
                bad.append(f"{p} ({problem})")
        if good:
            found.append((cdir, good))
        else:
            empty.append(cdir.name)
    if (bad or empty) and not skip_bad:
        parts = [f"{len(bad)} unreadable image(s): {listing_of(bad)}"] if bad else []
        parts += [f"class folder(s) with no readable images: {', '.join(empty)}"] if empty else []
        raise DatasetError(f"{root_p}: " + "; ".join(parts) + "; fix or remove them (--skip-bad leaves them out)")
    if bad:
        log.warning("skipped %d unreadable image(s): %s", len(bad), listing_of(bad))
    if empty:
        log.warning("left out %d class folder(s) with no readable images: %s", len(empty), ", ".join(empty))
    if len(found) < 2:
        raise DatasetError(f"{root_p}: needs at least 2 class folders with readable images, found {len(found)}")
    class_dirs = [cdir for cdir, _ in found]
    for ci, (_, good) in enumerate(found):
        items.extend(str(p) for p in good)
        targets.extend([ci] * len(good))
    if ignored:
        log.info("ignored %d non-image file(s) under %s", ignored, root_p)
    if links.count:
        log.warning(
            "skipped %d symlink(s) that lead back into %s or loop (their images would count twice), first: %s", links.count, root_p, links.first
        )
    return ImageDataset(
        root_p.name,
        [d.name for d in class_dirs],
        items,
        np.asarray(targets, np.int64),
        {"kind": "folder", "root": str(root_p.resolve()), "skipped_bad": len(bad), "ignored_non_images": ignored, "skipped_links": links.count},
    )


@dataclass
class SkippedLinks:
    """Symlinks in a data folder that resolve inside the folder itself, or loop: left out and counted."""

    count: int = 0
    first: str = ""

    def skip(self, path: Path, real_root: Path) -> bool:
        if not path.is_symlink():
            return False
        try:
            real = Path(os.path.realpath(path, strict=True))
        except (OSError, RuntimeError):  # a loop, or a link to nothing
            real = None
        if real is not None and real != real_root and real_root not in real.parents:
            return False  # a link to images elsewhere: kept
        self.count += 1
        self.first = self.first or str(path)
        return True


def _files_under(folder: Path, real_root: Path, links: SkippedLinks) -> list[Path]:
    """The visible files under a class folder, sorted; linked folders outside the data followed once each."""
    found: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # reached twice through links: a loop
            links.count += 1
            links.first = links.first or dirpath
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not links.skip(Path(dirpath) / d, real_root))
        for name in filenames:
            p = Path(dirpath) / name
            if not name.startswith(".") and not links.skip(p, real_root) and p.is_file():
                found.append(p)
    return sorted(found)


SHOWN_BAD = 10  # bad files named in one message (the rest counted)


def listing_of(problems: Sequence[str]) -> str:
    """The first SHOWN_BAD problems, and how many more."""
    shown = "; ".join(problems[:SHOWN_BAD])
    return shown + (f"; and {len(problems) - SHOWN_BAD} more" if len(problems) > SHOWN_BAD else "")


def _check_image(path: Path, *, decode: bool = False) -> str | None:
    """None when the file looks decodable: a cheap check of header and structure, or with `decode` (`--skip-bad`,
    which must know every bad file before the splits are drawn) a decode."""
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:  # numpy raises several types for bad files
            return str(exc)
        return None if arr.ndim in (2, 3) else f"array of shape {arr.shape} is not an image"
    try:
        from PIL import Image
    except ImportError:
        return "Pillow is not installed"
    try:
        with Image.open(path) as im:
            if not decode:
                im.verify()  # header and structure only: fast, but a truncated JPEG passes (and fails, named, when read)
            else:
                if im.format == "JPEG":  # DCT scaling: a fraction of the work, and still every byte of the file read
                    im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
                im.load()
    except Exception as exc:  # PIL raises many types for corrupt files
        return str(exc) or type(exc).__name__
    return None


def dataset_from_arrays(
    images: Sequence[np.ndarray] | np.ndarray, labels: Sequence[Any], classes: Sequence[str] | None = None, name: str = "arrays"
) -> ImageDataset:
    """In-memory images (any sizes) with labels given as class indices or class names."""
    if len(images) != len(labels):
        raise DatasetError(f"{name}: {len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise DatasetError(f"{name}: no images")
    labels = list(labels)
    if classes is None:
        classes = (
            sorted({str(x) for x in labels}, key=lambda s: (len(s), s))
            if not all(isinstance(x, (int, np.integer)) for x in labels)
            else [str(i) for i in range(int(max(labels)) + 1)]
        )
    classes = [str(c) for c in classes]
    index = {c: i for i, c in enumerate(classes)}
    targets = []
    for i, y in enumerate(labels):
        if isinstance(y, (int, np.integer)):
            if not 0 <= int(y) < len(classes):
                raise DatasetError(f"{name}: label {y} of image {i} is outside 0..{len(classes) - 1}")
            targets.append(int(y))
        elif str(y) in index:
            targets.append(index[str(y)])
        else:
            raise DatasetError(f"{name}: label {y!r} of image {i} is not one of the classes")
    if len(set(targets)) < 2:
        raise DatasetError(f"{name}: needs at least 2 classes, found {len(set(targets))}")
    return ImageDataset(name, classes, list(images), np.asarray(targets, np.int64), {"kind": "arrays", "name": name})


def load_dataset(source: str | os.PathLike[str], *, skip_bad: bool = False) -> ImageDataset:
    """`digits` (the built-in data) or an image-folder path. A folder named `digits` where the command runs makes the
    bare word ambiguous: refused, rather than training on the built-in data in place of the user's."""
    if str(source) == "digits":
        if os.path.lexists("digits"):
            raise DatasetError(
                "--data digits names the built-in digits data, and there is also ./digits here: give ./digits for "
                "that folder, or run where there is none for the built-in data"
            )
        return load_digits_dataset()
    return load_image_folder(source, skip_bad=skip_bad)


# ------------------------------------------------------------------------------------------------ splits


@dataclass(frozen=True)
class Splits:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    seed: int
    val_fraction: float
    test_fraction: float

    def describe(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
        }


def stratified_split(
    targets: np.ndarray,
    *,
    val_fraction: float = TrainConfig.val_fraction,
    test_fraction: float = TrainConfig.test_fraction,
    seed: int = TrainConfig.seed,
    classes: Sequence[str] | None = None,
) -> Splits:
    """Per class, shuffle with `seed` and cut into train/val/test; every class appears in every split."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise InputError(f"val/test fractions must be in (0, 1) and sum below 1, got {val_fraction} and {test_fraction}")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        if len(idx) < 3:
            name = classes[int(c)] if classes is not None else int(c)
            raise DatasetError(f"class {name!r} has {len(idx)} image(s); at least 3 are needed for train/val/test splits")
        idx = rng.permutation(idx)
        n_test = max(1, int(round(len(idx) * test_fraction)))
        n_val = max(1, int(round(len(idx) * val_fraction)))
        n_test = min(n_test, len(idx) - 2)
        n_val = min(n_val, len(idx) - n_test - 1)
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test : n_test + n_val])
        parts["train"].append(idx[n_test + n_val :])
    out = {k: np.sort(np.concatenate(v)) for k, v in parts.items()}
    return Splits(out["train"], out["val"], out["test"], seed, val_fraction, test_fraction)
