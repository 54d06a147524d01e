"""The host's modality seam (docs/ARCHITECTURE.md, "Modalities and bundle kinds"): one `HostTask` per modality
answers what `train`, `export` and `qat` do with it, so `edge_transfer.api` never branches on image or text.

- `ImageTask` (`edge_transfer.image_task`): image folders, registry backbones, every strategy and output.
- `TextTask` (`edge_transfer.text_task`, `text_export`): text folders and tables, text encoders.

`task_for_data`, `task_for_run` and `task_for_backbone` pick the task from what the user gave.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from runtimes.errors import InputError


class HostTask:
    """What the host does for one modality; subclasses implement each step or refuse it by name."""

    modality = "base"

    def train(self, data: Any, out: str | os.PathLike[str], cfg: Any) -> Any:
        """Train on `data` with the resolved `TrainConfig`; returns a `TrainedRun`."""
        raise NotImplementedError

    def export_run(
        self, run: str | os.PathLike[str], config: dict[str, Any], out: str | os.PathLike[str], opts: Any, formats: list[str]
    ) -> list[Any]:
        """Export a training run of this modality (its `config.json` as `config`)."""
        raise NotImplementedError

    def export_source(self, out: str | os.PathLike[str], opts: Any, formats: list[str]) -> list[Any]:
        """Export `opts.backbone` as it is (`--strategy pretrained`)."""
        raise NotImplementedError

    def qat(self, run: str | os.PathLike[str], out: str | os.PathLike[str] | None, config: Any) -> Any:
        """Quantisation-aware fine-tuning of a run of this modality."""
        raise InputError(f"quantisation-aware training is for image runs so far, not {self.modality}")


class ImageTask(HostTask):
    modality = "image"

    def train(self, data: Any, out: str | os.PathLike[str], cfg: Any) -> Any:
        from .image_task import train_images

        return train_images(data, out, cfg)

    def export_run(
        self, run: str | os.PathLike[str], config: dict[str, Any], out: str | os.PathLike[str], opts: Any, formats: list[str]
    ) -> list[Any]:
        from .image_task import export_images

        return export_images(run, out, opts, formats)

    def export_source(self, out: str | os.PathLike[str], opts: Any, formats: list[str]) -> list[Any]:
        from .image_task import export_images

        return export_images(None, out, opts, formats)

    def qat(self, run: str | os.PathLike[str], out: str | os.PathLike[str] | None, config: Any) -> Any:
        from .qat_train import run_qat

        return run_qat(run, out=out, config=config)


class TextTask(HostTask):
    modality = "text"

    def train(self, data: Any, out: str | os.PathLike[str], cfg: Any) -> Any:
        from .text_task import train_text

        return train_text(data, out, cfg)

    def export_run(
        self, run: str | os.PathLike[str], config: dict[str, Any], out: str | os.PathLike[str], opts: Any, formats: list[str]
    ) -> list[Any]:
        from .text_export import export_text_run

        return export_text_run(run, config, out, opts, formats)

    def export_source(self, out: str | os.PathLike[str], opts: Any, formats: list[str]) -> list[Any]:
        from .text_export import export_text_encoder

        return export_text_encoder(out, opts, formats)

    def qat(self, run: str | os.PathLike[str], out: str | os.PathLike[str] | None, config: Any) -> Any:
        raise InputError(f"{run}: quantisation-aware training is for image runs so far; export this text run's onnx-int8 or openvino-int8 instead")


TASKS: dict[str, HostTask] = {"image": ImageTask(), "text": TextTask()}


def task_for_data(data: Any) -> HostTask:
    """The task of `train`'s data: text (a `TextDataset`, a text table, or class folders of .txt files) or images."""
    from runtimes.text_data import TextDataset, is_text_source

    text = isinstance(data, TextDataset) or (isinstance(data, (str, os.PathLike)) and data != "digits" and is_text_source(data))
    return TASKS["text" if text else "image"]


def task_for_run(config: dict[str, Any]) -> HostTask:
    """The task of a training run, from its `config.json` (runs from before text are images)."""
    modality = config.get("modality", "image")
    if modality not in TASKS:
        raise InputError(f"this run's modality {modality!r} is not one this edge-transfer knows ({', '.join(TASKS)})")
    return TASKS[modality]


def task_for_backbone(name: str) -> HostTask:
    """The task of a source model given by name: text encoders (MiniLM, an encoder folder with a tokenizer.json) are
    text; everything else (registry names, timm:/torchvision:, checkpoints) is images. `hf:` names are text."""
    from .text_encoder import MINILM

    if name == MINILM or name.startswith("hf:") or (Path(name).is_dir() and (Path(name) / "tokenizer.json").is_file()):
        return TASKS["text"]
    return TASKS["image"]
