"""The export of text (docs/guides/text.md): a text run's classifier or encoder, and a text encoder as it is
(`export --backbone all-minilm-l6-v2 --strategy pretrained --output embedding --data TEXTS`), to validated text
bundles. `edge_transfer.host_task.TextTask` is its front."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from runtimes.errors import CheckpointError, DatasetError, InputError
from runtimes.text_data import TextDataset, load_text_dataset

from .text_encoder import MeanPooledEncoder, check_max_tokens
from .text_task import TOKENIZER_NAME, TextClassifier

logger = logging.getLogger(__name__)


def load_text_run(run_dir: str | os.PathLike[str], config: dict[str, Any]) -> TextClassifier:
    """Rebuild a text run's classifier from its config (the encoder's transformers config) and load its weights."""
    from transformers import AutoConfig, AutoModel

    from .model import build_head
    from .weights import read_safetensors

    try:
        fields = {k: v for k, v in config["encoder"]["config"].items() if k != "model_type"}
        enc_cfg = AutoConfig.for_model(config["encoder"]["model_type"], **fields)
        text = config["text"]
        head_cfg = config["head"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{run_dir}: config.json of a text run lacks a readable encoder/text/head section ({exc})") from None
    encoder = MeanPooledEncoder(AutoModel.from_config(enc_cfg, add_pooling_layer=False))
    model = TextClassifier(
        encoder, build_head(int(head_cfg["in_features"]), int(head_cfg["num_classes"]), 0.0), config["labels"], int(text["max_tokens"])
    )
    check_max_tokens(model.max_tokens, enc_cfg, f"{run_dir}/config.json")
    state = read_safetensors(Path(run_dir) / "model.safetensors")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{run_dir}: weights do not match the text classifier in its config ({str(exc).strip().splitlines()[0]})") from None
    return model.eval()


def text_run_data(config: dict[str, Any], data: str | None = None, columns: dict[str, str | None] | None = None) -> tuple[TextDataset, Any]:
    """A text run's dataset and its exact seeded split (unchanged since training), or `data` in full (its columns
    the run's unless `columns` names them)."""
    from .data import stratified_split

    info = config.get("data", {})
    source = data or info.get("source")
    if not source:
        raise DatasetError("this run was trained on in-memory texts: pass --data (a text folder or table) for validation")
    given = {k: v for k, v in (columns or {}).items() if v is not None} if data is not None else {}
    text_column, label_column = (
        given.get("text_column", info.get("text_column", "text")),
        given.get("label_column", info.get("label_column", "label")),
    )
    dataset = load_text_dataset(source, text_column=text_column, label_column=label_column, skip_bad=bool(info.get("skip_bad")))
    if data is None and dataset.fingerprint() != info.get("fingerprint"):
        raise DatasetError(f"{source}: the texts changed since training, so the held-out split cannot be reproduced; pass --data")
    if list(dataset.classes) != list(config["labels"]):
        raise DatasetError(f"{source}: classes {dataset.classes} differ from the run's labels {config['labels']}")
    split = config.get("split", {})
    splits = stratified_split(
        dataset.targets,
        val_fraction=split.get("val_fraction", 0.15),
        test_fraction=split.get("test_fraction", 0.2),
        seed=int(split.get("seed", 0)),
        classes=dataset.classes,
    )
    return dataset, splits


def export_text_run(run: str | os.PathLike[str], config: dict[str, Any], out: str | os.PathLike[str], opts: Any, formats: list[str]) -> list[Any]:
    """`export` of a text run: the classifier (or, with `--output embedding`, its encoder) to validated text bundles,
    judged on the run's held-out texts (or all of `--data`)."""
    from converters.bundle_kind import BundleKind, Classifier, Embedding
    from converters.export_input import TextExport

    if opts.output == "extensible":
        raise InputError("--output extensible is for image runs so far")
    if opts.features:
        raise InputError(
            "--features chooses the layers of --backbone; a text run's embedding is its encoder's "
            f"(cut at {config.get('features', 'the last layer')})"
        )
    model = load_text_run(run, config)
    dataset, splits = text_run_data(config, opts.data, {"text_column": opts.text_column, "label_column": opts.label_column})
    indices = np.arange(len(dataset)) if opts.data is not None else splits.test
    inp = TextExport(Path(run) / TOKENIZER_NAME, model.max_tokens)
    reference = text_reference(inp, dataset, indices, "all" if opts.data is not None else "test", str(opts.data or config["data"].get("source")))
    source = dict(config.get("source", {}), run=str(run), training_metrics=config.get("metrics", {}))
    graph: nn.Module = model
    kind: BundleKind = Classifier(tuple(model.labels))
    if opts.output == "embedding":
        section = {"dim": int(config["head"]["in_features"]), "normalization": "l2", "similarity": "cosine", "layers": [], "unknown_threshold": None}
        graph, kind = model.encoder.eval(), Embedding(section)
        source["output"] = "embedding"
    calibration = None
    if any(inp.format_spec(f).calibrated for f in formats):  # openvino-int8: static int8, calibrated on training texts
        seed = int(config.get("split", {}).get("seed", 0))
        picks = np.sort(np.random.default_rng(seed).permutation(splits.train)[: opts.calibration_size])
        calibration = text_calibration(inp, dataset, picks, "train", seed, str(config["data"].get("source")))
    return _export(graph, out, inp, kind, reference, calibration, source, opts, formats)


def export_text_encoder(out: str | os.PathLike[str], opts: Any, formats: list[str]) -> list[Any]:
    """`export --backbone ENCODER --strategy pretrained --output embedding`: a text encoder as it is (mean-pooled,
    L2-normalised) to embedding bundles, judged on the texts of `--data` against torch (cosine, neighbour agreement,
    and with labels 1-NN accuracy and the gallery's unknown threshold). openvino-int8 calibrates on
    `--calibration-data` texts."""
    from converters.bundle_kind import Embedding
    from converters.export_input import TextExport

    from .config import TrainConfig
    from .text_task import create_text_backbone, cut_after_layer, text_backbone_name

    if opts.strategy != "pretrained":
        raise InputError(f"export --backbone uses the encoder as it is (--strategy pretrained); for {opts.strategy!r}, train first")
    if opts.output != "embedding":
        raise InputError(
            "a text encoder as it is has no classes of its own: add --output embedding "
            f"(or train a head on your texts: edge-transfer train DATA --backbone {opts.backbone})"
        )
    if opts.data is None:
        raise InputError(
            "exporting a text encoder as it is needs --data: texts like the device will see (a folder of class folders "
            "of .txt, or a table), to validate each bundle on"
        )
    name = text_backbone_name(opts.backbone)  # a wrong name fails before any text is read
    columns = {"text_column": opts.text_column or "text", "label_column": opts.label_column or "label"}
    dataset = load_text_dataset(opts.data, skip_bad=opts.skip_bad, **columns)
    bb = create_text_backbone(name)
    if opts.features:
        bb = cut_after_layer(bb, opts.features)
    max_tokens = min(TrainConfig.max_tokens, int(getattr(bb.encoder.encoder.config, "max_position_embeddings", TrainConfig.max_tokens)))
    inp = TextExport(bb.tokenizer_json, max_tokens)
    reference = text_reference(inp, dataset, np.arange(len(dataset)), "all", str(opts.data))
    calibration = None
    if any(inp.format_spec(f).calibrated for f in formats):
        if opts.calibration_data is None:
            raise InputError("openvino-int8 of a text encoder as it is needs --calibration-data: texts like the device will see, other than --data")
        cal = load_text_dataset(opts.calibration_data, skip_bad=opts.skip_bad, **columns)
        picks = np.sort(np.random.default_rng(0).permutation(len(cal))[: opts.calibration_size])
        calibration = text_calibration(inp, cal, picks, "calibration-data", 0, str(opts.calibration_data))
    layers = bb.source.get("features", [])
    section = {"dim": bb.dim, "normalization": "l2", "similarity": "cosine", "layers": list(layers), "unknown_threshold": None}
    source = dict(bb.source, backbone=bb.name, strategy="pretrained", output="embedding")
    logger.info(f"{bb.name}: the encoder as it is ({bb.dim}-d, cut at {max_tokens} tokens), validated on {len(dataset)} texts of {opts.data}")
    return _export(bb.encoder.eval(), out, inp, Embedding(section), reference, calibration, source, opts, formats)


def text_reference(inp: Any, dataset: TextDataset, indices: np.ndarray, split: str, source: str) -> Any:
    """The gate's held-out texts: tokenised, with their labels, and the texts kept for the self-test."""
    from converters.validate import ReferenceData

    texts = [dataset.texts[int(i)] for i in indices]
    return ReferenceData(
        inp.tokenize(texts),
        dataset.targets[indices],
        split,
        {"source": source, "count": len(texts)},
        [dataset.sources[int(i)] for i in indices],
        original=lambda j: texts[j],  # type: ignore[arg-type,return-value]  # a text export keeps its texts here
    )


def text_calibration(inp: Any, dataset: TextDataset, picks: np.ndarray, split: str, seed: int, source: str) -> Any:
    """openvino-int8's calibration texts, tokenised, with where they came from."""
    from converters.calibration import CalibrationData

    return CalibrationData(inp.tokenize([dataset.texts[int(i)] for i in picks]), split, [dataset.sources[int(i)] for i in picks], seed, source)


def _export(
    graph: nn.Module, out: Any, inp: Any, kind: Any, reference: Any, calibration: Any, source: dict[str, Any], opts: Any, formats: list[str]
) -> list[Any]:
    from converters.export import export_bundles, raise_for_failures

    results = export_bundles(
        graph,
        out,
        preprocessing=inp,
        kind=kind,
        reference=reference,
        source=source,
        calibration=calibration,
        options=dataclasses.replace(opts, format=tuple(formats)),
    )
    raise_for_failures(results, out)
    return results
