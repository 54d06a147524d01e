"""Validate an artifact against its torch reference (the optimum habit, but failing the export by default).

The artifact is run through `runtimes` exactly as a device would run it. Measured: accuracy of torch and of the
artifact on the held-out split (when labels are known), top-1 agreement, max abs logit difference.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtimes.errors import InputError
from runtimes.predictor import Predictor

from .calibration import public_description

# top-1 agreement with torch on every image: required of fp32/fp16 (which must give torch's answers on any image)
DEFAULT_MIN_AGREEMENT = {"fp32": 0.995, "fp16": 0.99}

# int8 on data without labels the model knows (a pretrained model on the user's photos): top-1 agreement on every
# image is a poor gate, since int8 flips the images where fp32 itself is unsure. Judged instead on what a user keeps:
# torch's answer where torch is confident, torch's answer within the top 5, and logits pointing the same way.
# Measured (README, "Unlabelled data"): EfficientNet-Lite0 on 108 photo crops, post-training int8 agrees on 78%
# (ONNX Runtime) / 89% (OpenVINO) of all images, but on 100% of the 26 confident ones, with torch's top-1 in the
# top 5 on 100% and mean logit cosine 0.979 / 0.993. Calibrated on the built-in digits instead, OpenVINO int8 fails
# all three (69%, 66%, 0.70); ONNX Runtime int8 happens to keep them (100%, 100%, 0.980).
UNLABELLED_INT8_GATE = {"confident_agreement": 0.97, "top5_containment": 0.97, "logit_cosine_mean": 0.95}
MIN_CONFIDENT_IMAGES = 10  # fewer confident images cannot judge agreement on them: the gate says so and skips that check
# (on fewer than 34 images one image is more than the 3% the rate checks allow: there, one image may miss)


# one rule for data without labels the model knows, at every precision: the checks of the int8 gate, with floors as
# strict as each precision's labelled agreement (fp16 top-1 agreement on every image was 98.3% on an AVX2 host for
# ImageNet logits of digits, where fp32 itself is unsure; where torch is confident it kept every answer)
UNLABELLED_GATES = {
    "fp32": {"confident_agreement": 0.995, "top5_containment": 0.995, "logit_cosine_mean": 0.9999},
    "fp16": {"confident_agreement": 0.99, "top5_containment": 0.99, "logit_cosine_mean": 0.999},
    "int8": UNLABELLED_INT8_GATE,
}


def default_min_agreement(precision: str, labelled: bool) -> float | None:
    """The all-images agreement check a precision gets by default: fp32/fp16 with labels. None for int8 (judged on the
    accuracy drop) and for data without labels at every precision (judged by `UNLABELLED_GATES`)."""
    return DEFAULT_MIN_AGREEMENT.get(precision) if labelled else None


@dataclass
class ReferenceData:
    """Held-out inputs with optional targets, and where they came from: images (uint8 NHWC at the model's size), or
    for a text export a `runtimes.modality.TokenBatch` whose `original(i)` gives text i back."""

    images: Any  # np.ndarray (images) or runtimes.modality.TokenBatch (texts)
    targets: np.ndarray | None
    split: str
    description: dict[str, Any] = field(default_factory=dict)
    items: list[str] | None = None  # where each image came from (paths), to detect overlap with calibration data
    original: Callable[[int], np.ndarray] | None = None  # image i as it arrived (decoded, before resize and crop)

    @property
    def unit(self) -> str:
        """What one item is called in reports: "images" or "texts"."""
        return "images" if isinstance(self.images, np.ndarray) else "texts"

    def __post_init__(self) -> None:
        from runtimes.modality import TokenBatch

        if isinstance(self.images, TokenBatch):
            if len(self.images) == 0:
                raise InputError("reference texts must not be empty")
        elif self.images.ndim != 4 or self.images.dtype != np.uint8 or len(self.images) == 0:
            raise InputError(f"reference images must be a non-empty uint8 (N, H, W, 3) batch, got {self.images.dtype} {self.images.shape}")
        if self.targets is not None and len(self.targets) != len(self.images):
            raise InputError(f"reference data: {len(self.images)} images but {len(self.targets)} targets")


SIGNIFICANCE = 0.05  # the exact test's level for "this many net losses are more than chance"


def worse_p_value(losses: int, gains: int) -> float:
    """One-sided exact (McNemar) test on paired predictions: the chance of at least `losses` of the
    `losses + gains` discordant images going against the artifact if it were as accurate as torch."""
    n = losses + gains
    return float(sum(math.comb(n, k) for k in range(losses, n + 1)) / 2**n) if n else 1.0


def smallest_significant_loss(alpha: float = SIGNIFICANCE) -> int:
    """The fewest net losses (with no gains) that the exact test calls significant: 5 at 5%."""
    k = 1
    while worse_p_value(k, 0) >= alpha:
        k += 1
    return k


def paired_judgement(torch_hits: np.ndarray, artifact_hits: np.ndarray, max_drop: float) -> dict[str, Any]:
    """The accuracy check on paired predictions (the same images through torch and the artifact).

    `losses`: images torch gets right and the artifact wrong; `gains`: the reverse; the drop is their difference over
    the count. A set is too small to judge when one image is worth more than `max_drop`: there, one net loss is
    allowed (it is the resolution of the set, p = 0.5 under the exact test) and two or more fail; otherwise the drop
    must be within `max_drop`, as before. The exact test's p-value is reported with both, and `resolvable_drop` says
    from which drop this set could call a loss significant."""
    n = len(torch_hits)
    losses = int((torch_hits & ~artifact_hits).sum())
    gains = int((~torch_hits & artifact_hits).sum())
    net = losses - gains
    too_small = 1.0 / n > max_drop + 1e-12
    ok = net <= 1 if too_small else net / n <= max_drop + 1e-9
    return {
        "losses": losses,
        "gains": gains,
        "p_worse": round(worse_p_value(losses, gains), 6),
        "one_image": round(1.0 / n, 6),
        "too_small_to_judge": too_small,
        "resolvable_drop": round(smallest_significant_loss() / n, 6),
        "passed": bool(ok),
    }


CONFIDENT = 0.5  # torch's softmax top-1 probability from which its answer counts as confident


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def unlabelled_metrics(reference_logits: np.ndarray, logits: np.ndarray) -> dict[str, Any]:
    """What an artifact keeps of torch's answers when there are no labels to score: top-1 agreement on the images
    where torch is confident (softmax top-1 >= `CONFIDENT`), how often torch's top-1 is in the artifact's top-5,
    and the cosine similarity of the logit vectors (mean and worst)."""
    top1 = reference_logits.argmax(1)
    confident = softmax(reference_logits).max(1) >= CONFIDENT
    k = min(5, logits.shape[1])
    top5 = np.argsort(-logits, axis=1)[:, :k]
    a, b = reference_logits.astype(np.float64), logits.astype(np.float64)
    cosine = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {
        "confident_count": int(confident.sum()),
        "confident_agreement": float((logits.argmax(1)[confident] == top1[confident]).mean()) if confident.any() else None,
        "top5_containment": float((top5 == top1[:, None]).any(1).mean()),
        "logit_cosine_mean": round(float(cosine.mean()), 6),
        "logit_cosine_min": round(float(cosine.min()), 6),
    }


def calibration_overlap(reference: ReferenceData, calibration_items: list[str]) -> int:
    """How many validation images are also calibration images (the same file, however the path was written)."""
    if not reference.items:
        return 0

    def key(item: str) -> str:
        return os.path.realpath(item) if os.path.sep in item or os.path.exists(item) else item

    calibration = {key(i) for i in calibration_items}
    return sum(1 for i in reference.items if key(i) in calibration)


def _accuracy(logits: np.ndarray, targets: np.ndarray | None) -> float | None:
    if targets is None:
        return None
    return float((logits.argmax(1) == targets).mean())


def compare(
    predictor: Predictor,
    reference_logits: np.ndarray,
    data: ReferenceData,
    *,
    min_agreement: float | None,
    max_drop: float | None,
    unlabelled_gate: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Run `data` through the predictor, compare with `reference_logits`; return the manifest's `validation`.

    The gate: accuracy may fall at most `max_drop` (a fraction: 0.01 = 1 point) below torch's when labels are
    known, judged on paired predictions (`paired_judgement`: on a set too small to tell such a drop, one net image);
    without labels, `unlabelled_gate` (floors for `unlabelled_metrics`, e.g. `UNLABELLED_INT8_GATE`) applies; and
    top-1 agreement with torch must reach `min_agreement` when that is given. With neither check
    applicable (no labels and no `min_agreement`) nothing could be checked and the gate fails.
    """
    t = time.perf_counter()
    logits = predictor.run_chunked(data.images)
    seconds = time.perf_counter() - t
    if logits.shape != reference_logits.shape:
        raise InputError(f"artifact output shape {logits.shape} differs from the torch reference {reference_logits.shape}")
    agree = float((logits.argmax(1) == reference_logits.argmax(1)).mean())
    diff = np.abs(logits.astype(np.float64) - reference_logits.astype(np.float64))
    torch_acc = _accuracy(reference_logits, data.targets)
    art_acc = _accuracy(logits, data.targets)
    drop = None if torch_acc is None or art_acc is None else round(torch_acc - art_acc, 6)
    checks = {}
    paired = None
    if data.targets is not None and max_drop is not None:
        paired = paired_judgement(reference_logits.argmax(1) == data.targets, logits.argmax(1) == data.targets, max_drop)
        checks["accuracy_drop"] = paired["passed"]
    if min_agreement is not None:
        checks["top1_agreement"] = agree >= min_agreement
    unlabelled = unlabelled_metrics(reference_logits, logits)
    if unlabelled_gate is not None and data.targets is None:
        for name, floor in unlabelled_gate.items():
            if name == "confident_agreement" and unlabelled["confident_count"] < MIN_CONFIDENT_IMAGES:
                unlabelled["confident_note"] = f"only {unlabelled['confident_count']} confident image(s): too few to judge, not checked"
                continue
            checks[name] = unlabelled[name] >= floor
            count = unlabelled["confident_count"] if name == "confident_agreement" else len(data.images)
            if name != "logit_cosine_mean" and (1 - floor) * count < 1:  # one image is more than the allowed share
                checks[name] = round((1 - unlabelled[name]) * count) <= 1  # as for the accuracy drop: one image allowed
    return {
        "split": data.split,
        "count": int(len(data.images)),
        "unit": data.unit,
        **({"data": public_description(data.description)} if data.description else {}),
        "torch_accuracy": torch_acc,
        "artifact_accuracy": art_acc,
        "accuracy_drop": drop,
        **({"paired": paired} if paired is not None else {}),
        "top1_agreement": agree,
        "unlabelled": unlabelled,
        **({"unlabelled_gate": dict(unlabelled_gate)} if unlabelled_gate is not None and data.targets is None else {}),
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "max_drop": None if max_drop is None else float(max_drop),
        "min_agreement": None if min_agreement is None else float(min_agreement),
        "checks": checks,
        "ms_per_image": round(1000 * seconds / len(data.images), 3),
        "inference_precision": predictor.inference_precision,  # what the device is pinned to (see OpenVINO)
        "runtime": predictor.describe(),
        "passed": bool(checks) and all(checks.values()),
    }


def add_check(validation: dict[str, Any], name: str, ok: bool) -> None:
    """Add one more check to a `compare` result (in place); the gate passes only if every check does."""
    validation["checks"][name] = bool(ok)
    validation["passed"] = all(validation["checks"].values())


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def format_validation(v: dict[str, Any]) -> str:
    if v.get("kind") == "embedding":  # converters.embedding_gate
        return format_embedding_validation(v)
    need = []
    if v.get("max_drop") is not None and v.get("accuracy_drop") is not None:
        need.append(f"drop <= {100 * v['max_drop']:.2f} pt")
    if v.get("min_agreement") is not None:
        need.append(f"agreement >= {_pct(v['min_agreement'])}")
    for name, floor in (v.get("unlabelled_gate") or {}).items():
        if name in v.get("checks", {}):
            got = v["unlabelled"][name]
            need.append(f"{name.replace('_', ' ')} >= {floor:g} (is {got:.3g})")
    if v.get("min_int8_share") is not None:
        need.append(f"int8 share of multiply-adds >= {100 * v['min_int8_share']:.0f}% (is {100 * v['int8_macs_share']:.1f}%)")
    drop = "n/a" if v.get("accuracy_drop") is None else f"{100 * v['accuracy_drop']:+.2f} pt"
    unit = v.get("unit", "images")
    one = unit[:-1]
    paired = v.get("paired")
    if paired:
        drop += f", {paired['losses']} {one}(s) lost and {paired['gains']} gained, exact test p={paired['p_worse']:.2g}"
        if paired["too_small_to_judge"]:
            need[0] = (
                f"at most 1 net {one} lost (one {one} is {100 * paired['one_image']:.2f} pt, more than the {100 * v['max_drop']:.2f} pt "
                f"allowed: too few {unit} to judge that drop; on this set only drops of {100 * paired['resolvable_drop']:.1f} pt or more "
                "stand out from chance)"
            )
    rung = f"{v['rung']} int8, " if v.get("rung") else ""
    return (
        f"{rung}validation on {v['split']} ({v['count']} {unit}): torch accuracy {_pct(v['torch_accuracy'])}, "
        f"artifact accuracy {_pct(v['artifact_accuracy'])} (drop {drop}), top-1 agreement {_pct(v['top1_agreement'])}, "
        f"max |logit diff| {v['max_abs_logit_diff']:.3g}; needs {' and '.join(need) or 'labels or a minimum agreement'}: "
        f"{'PASS' if v['passed'] else 'FAIL'}"
    )


def format_embedding_validation(v: dict[str, Any]) -> str:
    """One line: cosine, neighbour agreement and 1-NN accuracy against the floors."""
    gate, unit = v.get("embedding_gate") or {}, v.get("unit", "images")
    knn = ""
    if v.get("artifact_accuracy") is not None:
        knn = (
            f", 1-NN accuracy {100 * v['artifact_accuracy']:.2f}% (torch {100 * v['torch_accuracy']:.2f}%, "
            f"drop {100 * v['accuracy_drop']:+.2f} pt, for information: not gated)"
        )
    return (
        f"{v.get('rung', '') and v['rung'] + ' int8, '}embedding validation on {v['split']} ({v['count']} {unit}): cosine to torch mean "
        f"{v['mean_cosine']:.5f} (needs >= {gate.get('mean_cosine')}), min {v['min_cosine']:.4f}; neighbour agreement "
        f"{100 * v['neighbour_agreement']:.2f}% within torch's {v.get('neighbours')} nearest "
        f"(needs >= {100 * gate.get('neighbour_agreement', 0):.0f}%){knn}: "
        f"{'PASS' if v['passed'] else 'FAIL'}"
    )


def _speedup(v: dict[str, Any]) -> str:
    """The table's speed-up: the median paired ratio, with its quartiles when they straddle 1 (within noise)."""
    s, spread = v.get("speedup_vs_fp32"), v.get("speedup_spread")
    if not s:
        return "-"
    if isinstance(spread, list) and len(spread) == 2 and spread[0] <= 1.0 <= spread[1]:
        return f"{s:.2f}x (noise: {spread[0]:.2f}-{spread[1]:.2f})"
    return f"{s:.2f}x"


def format_table(rows: list[dict[str, Any]]) -> str:
    """The multi-format summary: one row per format (keys: format, bytes, validation, written, error). For int8
    formats, 'int8 MACs' is the share of multiply-adds done in int8 and 'rung' the step of the ladder that made
    the bundle (see `converters.ladder`). 'speed-up' is the bundle's backend call against the same backend
    running the fp32 graph, on this host at the bundle's batch (`converters.latency`)."""
    texts = any((r.get("validation") or {}).get("unit") == "texts" for r in rows)
    per = "ms/text (val)" if texts else "ms/img (val)"
    header = ("format", "size", "accuracy", "drop", "agreement", "int8 MACs", "rung", per, "vs fp32", "result")
    batches = sorted({v["latency_batch"] for r in rows if (v := r.get("validation") or {}).get("speedup_vs_fp32") and v.get("latency_batch")})
    lines = []
    for r in rows:
        v = r.get("validation") or {}
        drop = v.get("accuracy_drop")
        result = "PASS" if v.get("passed") else ("ERROR" if r.get("error") and not v else "FAIL")
        if v and not v.get("passed") and r.get("written"):
            result = "FAIL (written)"
        lines.append(
            (
                r["format"],
                "-" if not r.get("bytes") else f"{r['bytes'] / 1e6:.2f} MB",
                _pct(v.get("artifact_accuracy")) if v else "-",
                ("n/a" if drop is None else f"{100 * drop:+.2f} pt" + (" (not gated)" if v.get("kind") == "embedding" else "")) if v else "-",
                _pct(v.get("top1_agreement")) if v else "-",
                f"{100 * v['int8_macs_share']:.1f}%" if v.get("int8_macs_share") is not None else "-",
                v.get("rung") or "-",
                f"{v['ms_per_image']:.2f}" if v.get("ms_per_image") is not None else "-",
                _speedup(v),
                result,
            )
        )
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*row) for row in lines]
    at = f" at batch {', '.join(map(str, batches))}" if batches else ""
    out.append(
        f"{per}: the validation pass, batched. vs fp32: this bundle's backend call against the same backend running the fp32 graph{at}, "
        "timed in interleaved pairs (not a ratio of the ms column; an fp32 bundle is the baseline and has none)"
    )
    return "\n".join(out)
