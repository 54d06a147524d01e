"""Evaluate a bundle on labelled data on the device: numpy + the bundle's backend, never torch.

An image bundle takes a folder with one sub-folder per class, named like the bundle's labels (a bundle label with
no folder is simply not evaluated); a text bundle takes class folders of .txt files or a CSV/TSV/JSONL table
(`runtimes.text_data`). Inputs go through the same `Predictor.prepare` / `run` path as `predict`. The result has the
accuracy, per-class precision / recall / F1, the confusion matrix (rows: true class, columns: predicted), the
mistakes the model was most confident about (with their paths), and the files left out as unreadable.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .open_set import UNKNOWN_FOLDER
from .predictor import softmax
from .preprocess import IMAGE_EXTENSIONS, image_files, read_image
from .seen import count_seen

CHUNK = 32  # images decoded and run together


@dataclass
class Evaluation:
    """What `evaluate` measured. `confusion[i][j]`: images of class `labels[i]` predicted as `labels[j]`."""

    bundle: str
    data: str
    labels: list[str]
    count: int
    accuracy: float
    per_class: list[dict[str, Any]]  # label, support, precision, recall, f1 (None where undefined)
    confusion: list[list[int]]
    mistakes: list[dict[str, Any]]  # the most confident wrong predictions: path, true, predicted, confidence
    skipped: list[dict[str, str]] = field(default_factory=list)  # unreadable files left out (skip_bad): path, reason
    validation_passed: bool | None = None  # the bundle's export gate, as its manifest records it
    seen_in_training: dict[str, Any] | None = None  # images the model was trained on (`runtimes.seen`): seen, of, sampled
    unit: str = "images"  # what was counted: images or texts
    open_set: dict[str, Any] | None = None  # with a minimum score or an unknown/ folder: coverage and accuracy together

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def labelled_files(folder: str | os.PathLike[str], labels: tuple[str, ...] | list[str]) -> list[tuple[str, int]]:
    """(path, label index) for every image under the class sub-folders, sorted (index -1 for the images of an
    `unknown/` folder: things the bundle was never taught); InputError for a folder that is not a labelled image
    folder of this bundle's classes."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root}: the data must be an image folder with one sub-folder per class")
    subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subs:
        raise InputError(f"{root}: no class sub-folders (one per class, named like the bundle's labels)")
    unknown = [p.name for p in subs if p.name not in labels and p.name != UNKNOWN_FOLDER]
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5])
        raise InputError(
            f"{root}: class folder(s) {shown} are not among the bundle's labels ({', '.join(list(labels)[:10])}{' ...' if len(labels) > 10 else ''})"
        )
    out: list[tuple[str, int]] = []
    for sub in subs:
        index = -1 if sub.name == UNKNOWN_FOLDER else list(labels).index(sub.name)  # -1: none of the bundle's classes
        out.extend((f, index) for f in image_files(sub))
    if not out:
        raise InputError(f"{root}: no image files in its class folders ({', '.join(IMAGE_EXTENSIONS)})")
    return out


def _decode(
    files: list[tuple[str, int]], skip_bad: bool, skipped: list[dict[str, str]], preprocessing: Any = None
) -> tuple[list[np.ndarray], list[tuple[str, int]]]:
    images, kept = [], []
    for path, target in files:
        try:
            images.append(read_image(path, preprocessing))  # a bundle's JPEG decoding is part of its definition
        except InputError as exc:
            if not skip_bad:
                raise InputError(f"{exc}; fix or remove it (--skip-bad leaves unreadable images out)") from None
            skipped.append({"path": path, "reason": str(exc)})
            continue
        kept.append((path, target))
    return images, kept


def _per_class(confusion: np.ndarray, labels: list[str]) -> list[dict[str, Any]]:
    rows = []
    for i, label in enumerate(labels):
        tp, support, predicted = int(confusion[i, i]), int(confusion[i].sum()), int(confusion[:, i].sum())
        precision = tp / predicted if predicted else None
        recall = tp / support if support else None
        f1 = 2 * precision * recall / (precision + recall) if precision and recall else (0.0 if support and predicted else None)
        rows.append({"label": label, "support": support, "precision": precision, "recall": recall, "f1": f1})
    return rows


def _labelled_texts(
    folder: str | os.PathLike[str], labels: list[str], skip_bad: bool, columns: dict[str, Any]
) -> tuple[list[str], list[tuple[str, int]]]:
    """A text bundle's labelled data: (texts, [(where each came from, label index)])."""
    from .text_data import load_text_dataset

    data = load_text_dataset(folder, skip_bad=skip_bad, **columns)
    unknown = [c for c in data.classes if c not in labels]
    if unknown:
        raise InputError(
            f"{folder}: class(es) {', '.join(repr(u) for u in unknown[:5])} are not among the bundle's labels ({', '.join(labels[:10])})"
        )
    index = [labels.index(c) for c in data.classes]
    return list(data.texts), [(src, index[int(t)]) for src, t in zip(data.sources, data.targets)]


def evaluate(
    predictor: Any,
    folder: str | os.PathLike[str],
    *,
    skip_bad: bool = False,
    worst: int = 10,
    progress: Callable[[int, int], None] | None = None,
    text_columns: dict[str, Any] | None = None,
    min_score: float | None = None,
) -> Evaluation:
    """Run `predictor` over labelled data; see the module docstring. `skip_bad`: leave unreadable items out
    (images listed in `skipped`; texts counted and warned by `runtimes.text_data`) instead of stopping at the first;
    `worst`: how many confident mistakes to keep; `text_columns`: a text table's `text_column` / `label_column`;
    `min_score`: answer only at this top-1 score or more (`open_set`: coverage, accuracy of the answers, and for an
    `unknown/` folder, the share answered unknown). `accuracy` and the confusion matrix count every known image."""
    if predictor.is_embedding:
        raise InputError(
            f"{predictor.bundle.path} is an embedding bundle (no classes to score); enrol labels in a gallery and identify "
            "(edge-transfer enroll / identify), or evaluate the classifier bundle of the same run"
        )
    labels = list(predictor.labels)
    texts: list[str] | None = None
    if predictor.modality == "text":
        texts, files = _labelled_texts(folder, labels, skip_bad, text_columns or {})
    else:
        files = labelled_files(folder, labels)
    n = len(labels)
    confusion = np.zeros((n, n), dtype=np.int64)
    mistakes: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    done = 0
    tally = {"known": 0, "answered": 0, "answered_right": 0, "unknown": 0, "unknown_rejected": 0}
    for start in range(0, len(files), CHUNK):
        images: list[Any]
        if texts is not None:
            images, kept = texts[start : start + CHUNK], files[start : start + CHUNK]
        else:
            images, kept = _decode(files[start : start + CHUNK], skip_bad, skipped, predictor.manifest.preprocessing)
        if images:
            probs = softmax(predictor.run_chunked(predictor.prepare(images)))
            for (path, target), row in zip(kept, probs):
                guess = int(row.argmax())
                answered = min_score is None or float(row[guess]) >= min_score
                if target < 0:  # an image of nothing the bundle knows: right only when not answered
                    tally["unknown"] += 1
                    tally["unknown_rejected"] += not answered
                    continue
                tally["known"] += 1
                tally["answered"] += answered
                tally["answered_right"] += answered and guess == target
                confusion[target, guess] += 1
                if guess != target:
                    mistakes.append(
                        {
                            "path": path,
                            "true": labels[target],
                            "predicted": labels[guess],
                            "confidence": float(row[guess]),
                            "true_score": float(row[target]),
                        }
                    )
        done += len(files[start : start + CHUNK])
        if progress is not None:
            progress(done, len(files))
    count = int(confusion.sum())
    if count == 0 and tally["unknown"]:
        raise InputError(f"{folder}: only {UNKNOWN_FOLDER}/ images; val needs images of the bundle's classes too")
    if count == 0:
        raise InputError(f"{folder}: every image was unreadable ({len(skipped)} left out); nothing to evaluate")
    mistakes.sort(key=lambda m: -m["confidence"])
    seen = count_seen(predictor.manifest.source.get("seen_images"), [path for path, _ in files])
    # the classes in the data or predicted for it (a 1000-class bundle evaluated on 6 folders reports those 6 and
    # whatever they were taken for, not a 1000 x 1000 matrix)
    shown = [i for i in range(n) if confusion[i].any() or confusion[:, i].any()]
    confusion = confusion[np.ix_(shown, shown)]
    labels = [labels[i] for i in shown]
    return Evaluation(
        bundle=str(predictor.bundle.path),
        data=str(folder),
        labels=labels,
        count=count,
        accuracy=float(np.trace(confusion) / count),
        per_class=_per_class(confusion, labels),
        confusion=confusion.tolist(),
        mistakes=mistakes[: max(0, worst)],
        skipped=skipped,
        validation_passed=predictor.validation_passed,
        seen_in_training=seen,
        unit=predictor.input.unit,
        open_set=_open_set_report(tally, min_score) if min_score is not None or tally["unknown"] else None,
    )


def _open_set_report(tally: dict[str, int], min_score: float | None) -> dict[str, Any]:
    """Coverage and accuracy together: of the known images, the share answered and how many of those were right;
    of the `unknown/` images, the share answered unknown."""
    known, answered = tally["known"], tally["answered"]
    return {
        "min_score": min_score,
        "known": known,
        "coverage": answered / known if known else None,
        "answered_accuracy": tally["answered_right"] / answered if answered else None,
        "kept_and_right": tally["answered_right"] / known if known else None,
        "unknown": tally["unknown"],
        "unknown_rejected": tally["unknown_rejected"] / tally["unknown"] if tally["unknown"] else None,
    }
