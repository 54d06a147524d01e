"""`probe-layers`: a linear probe on every layer of a backbone, with what the cut network costs (README: Feature
transfer).

One pass over the data computes every layer's pooled features together (cached like the probe's own), then each
layer gets the linear probe's L2 sweep (`probe.fit_linear_head`) on its columns, and the network cut after that
layer is exported to ONNX and timed with ONNX Runtime at batch 1, all in the same process, so the rows compare.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import TrainConfig
from .layers import FINAL, feature_layers, layer_backbone, parse_layers
from .model import ImageClassifier

logger = logging.getLogger(__name__)

ROUNDS, CALLS_PER_ROUND = 10, 5  # 50 timed calls per layer, interleaved across layers
WITHIN_BEST = 0.01  # the recommendation: the fastest layer within 1 pt of the best val accuracy


@dataclass
class LayerResult:
    """One layer's probe: feature size, accuracy on the run's val and test splits, and its cut network's cost."""

    layer: str
    dim: int
    val_accuracy: float
    test_accuracy: float
    weight_decay: float
    ms: float | None  # ONNX Runtime p50 at batch 1, uint8 image in, logits out (the whole bundle graph)
    onnx_mb: float | None
    parameters: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def probe_layers(
    data: Any = "digits",
    *,
    layers: str | list[str] | None = None,
    config: TrainConfig | None = None,
    time_layers: bool = True,
    **overrides: Any,
) -> tuple[list[LayerResult], dict[str, Any]]:
    """Probe each of `layers` (default: every layer of `feature_layers`) on `data`, split as `train` splits it.

    `config`/`overrides` are `train`'s options (backbone, image_size, seed, fractions, cache_dir, device...).
    Returns the rows in network order and facts about the run (data, split sizes, backbone, seconds).
    """
    from .data import ImageDataset, load_dataset, stratified_split
    from .distributed import make_accelerator
    from .image_task import task_backbone
    from .probe import backbone_features, fit_linear_head

    cfg = (config or TrainConfig()).with_overrides(strategy="linear-probe", **overrides).resolved()
    t0 = time.perf_counter()
    dataset = data if isinstance(data, ImageDataset) else load_dataset(data, skip_bad=cfg.skip_bad)
    splits = stratified_split(dataset.targets, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.seed, classes=dataset.classes)
    bb = task_backbone(cfg)
    chosen = parse_layers(layers, bb) if layers else feature_layers(bb)
    columns = _columns(bb, chosen)
    tapped = layer_backbone(bb, chosen)  # every layer in one pass, cut after the deepest unless `final` is asked for
    accelerator = make_accelerator(cfg.device, cfg.mixed_precision)
    feats, cache = backbone_features(tapped, dataset, cfg, accelerator=accelerator)
    y = dataset.targets
    sweep = dataclasses.replace(cfg, progress=False)  # one line per layer, not a bar and six lines per fit
    rows: list[LayerResult] = []
    sessions: list[Any] = []
    for name in chosen:
        lo, hi = columns[name]
        x = feats[:, lo:hi]
        head, history = fit_linear_head(
            x[splits.train], y[splits.train], x[splits.val], y[splits.val], len(dataset.classes), sweep, device=torch.device("cpu"), log=False
        )
        best = max(history, key=lambda r: (r["val_accuracy"], -r["val_loss"]))
        with torch.no_grad():
            test = float((head(torch.from_numpy(x[splits.test])).argmax(1).numpy() == y[splits.test]).mean())
        cut = layer_backbone(bb, [name])
        session, mb = _onnx_session(ImageClassifier(cut, head, dataset.classes)) if time_layers else (None, None)
        sessions.append(session)
        rows.append(LayerResult(name, hi - lo, best["val_accuracy"], test, best["weight_decay"], None, mb, sum(p.numel() for p in cut.parameters())))
        logger.info(f"probe-layers: {name} ({hi - lo}-d) val {best['val_accuracy']:.4f} test {test:.4f}")
    if time_layers:
        for row, ms in zip(rows, _time_interleaved(sessions, bb.preprocessing.input_size)):
            row.ms = ms
        logger.info("probe-layers: latency " + ", ".join(f"{r.layer} {r.ms:.2f} ms" for r in rows if r.ms is not None))
    facts = {
        "data": dataset.name,
        "images": len(dataset),
        "classes": len(dataset.classes),
        "split": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        "backbone": bb.name,
        "input_size": list(bb.preprocessing.input_size),
        "feature_cache": cache,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return rows, facts


def _columns(backbone: Any, layers: list[str]) -> dict[str, tuple[int, int]]:
    """Each layer's columns in `layer_backbone(backbone, layers)`'s features (network order, `final` last)."""
    from .layers import captured, pool

    h, w = backbone.preprocessing.input_size
    inner = [n for n in layers if n != FINAL]
    with torch.no_grad(), captured(backbone.body, inner) as seen:
        backbone(torch.zeros(1, 3, h, w))
        dims = {n: int(pool(seen[n]).shape[1]) for n in inner} | {FINAL: backbone.num_features}
    out, start = {}, 0
    for name in layers:
        out[name] = (start, start + dims[name])
        start += dims[name]
    return out


def _onnx_session(model: ImageClassifier) -> tuple[Any, float]:
    """(an ONNX Runtime session of the bundle graph of `model` (uint8 NHWC in, batch 1), its ONNX file MB)."""
    import onnxruntime as ort

    from converters.onnx_export import export_onnx

    clone = model.for_export()
    h, w = clone.preprocessing.input_size
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cut.onnx"
        export_onnx(clone, path, (h, w), batch_size=1)
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), path.stat().st_size / 1e6


def _time_interleaved(sessions: list[Any], size: tuple[int, int]) -> list[float]:
    """p50 ms at batch 1 of each session, timed in `ROUNDS` rounds that visit every session in turn (`CALLS_PER_ROUND`
    calls each): load on the machine in any one moment falls on every layer alike, not on the one being timed."""
    feed = np.random.default_rng(0).integers(0, 256, (1, *size, 3), dtype=np.uint8)
    feeds = [{s.get_inputs()[0].name: feed} for s in sessions]
    for s, f in zip(sessions, feeds):
        for _ in range(5):
            s.run(None, f)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(ROUNDS):
        for i, (s, f) in enumerate(zip(sessions, feeds)):
            for _ in range(CALLS_PER_ROUND):
                t = time.perf_counter()
                s.run(None, f)
                times[i].append(time.perf_counter() - t)
    return [float(np.median(t)) * 1000.0 for t in times]


def tie_window(accuracy: float, count: int) -> float:
    """How far below `accuracy` on `count` images another accuracy is still tied with it: the larger of
    `WITHIN_BEST` and the distance to the lower end of the Wilson 95% interval (at 100% on 48 images, 7.4 pt)."""
    if count <= 0:
        return WITHIN_BEST
    z = 1.96
    centre = (accuracy + z * z / (2 * count)) / (1 + z * z / count)
    half = z * np.sqrt(accuracy * (1 - accuracy) / count + z * z / (4 * count * count)) / (1 + z * z / count)
    return max(WITHIN_BEST, accuracy - float(centre - half))


def recommend(rows: list[LayerResult], val_count: int = 0) -> tuple[LayerResult, list[LayerResult]]:
    """(the recommended layer, the layers tied with the best val accuracy). Tied: within `tie_window` of it on
    `val_count` images (at least `WITHIN_BEST`). Among them the best accuracy per millisecond (without timings:
    the shallowest)."""
    best = max(r.val_accuracy for r in rows)
    window = tie_window(best, val_count)
    near = [r for r in rows if r.val_accuracy >= best - window - 1e-12]
    if all(r.ms for r in near):
        return max(near, key=lambda r: r.val_accuracy / float(r.ms or 1.0)), near
    return near[0], near
