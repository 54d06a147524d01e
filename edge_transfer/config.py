"""Training options and the strategy table, with one home for every default (docs/ARCHITECTURE.md).

Torch-free, so the CLI can build its flags, choices and defaults from here on a device-only install.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from runtimes.errors import InputError
from runtimes.options import check_bounds, replace_options

DEFAULT_BACKBONE = "efficientnet_lite0"
DEFAULT_QAT_EPOCHS = 3


@dataclass(frozen=True)
class Strategy:
    """One transfer strategy: its defaults, and the function that trains it ("module:function", imported when
    used; None for `pretrained`, which trains nothing)."""

    name: str
    epochs: int
    lr: float
    weight_decay: float | None  # None: chosen on the validation split (the probe's L2 sweep)
    patience: int
    trainer: str | None
    description: str


STRATEGY_SPECS: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("pretrained", 0, 0.0, 0.0, 0, None, "the source model as it is, with its own labels"),
        Strategy("linear-probe", 300, 1e-3, None, 10, "edge_transfer.probe:fit_probe", "a new linear head on cached frozen features"),
        Strategy("finetune", 10, 1e-3, 1e-4, 3, "edge_transfer.finetune:fit_network", "a new head and the whole network"),
        Strategy("partial", 10, 1e-3, 1e-4, 3, "edge_transfer.finetune:fit_network", "a new head and the last N blocks"),
    )
}
STRATEGIES = tuple(STRATEGY_SPECS)


@dataclass
class TrainConfig:
    """Everything `train` takes besides the data and the output directory; `None` means the default of the backbone
    (image_size, interpolation), of the strategy (epochs, lr, weight_decay, patience) or of the machine (device,
    workers, feature batch). Each field's default here is the one default: the CLI's flags are checked against it."""

    backbone: str = DEFAULT_BACKBONE
    strategy: str = "linear-probe"
    pretrained: bool = True  # load the backbone's pretrained weights (False: random init, for tests)
    image_size: int | None = None
    interpolation: str | None = None
    crop_pct: float | None = 1.0  # new tasks see the whole image by default, not ImageNet's 87.5% centre crop
    resize: str = "pillow"  # how images are resized, here and on the device (runtimes.preprocess.RESIZES)
    jpeg_draft: bool = True  # large JPEGs decode at 1/2-1/8 size (runtimes.preprocess.draft_scale), here and on the device
    features: str | None = None  # linear probe on these layers' pooled outputs (edge_transfer.layers); None: final
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    skip_bad: bool = False
    text_column: str = "text"  # text tables: the column holding the text (a name, or a 0-based position)
    label_column: str = "label"  # ... and the one holding the label
    max_tokens: int = 256  # text: where the tokenizer cuts a text (MiniLM reads at most 256)
    epochs: int | None = None
    lr: float | None = None
    backbone_lr_scale: float = 0.1
    batch_size: int = 32
    weight_decay: float | None = None
    patience: int | None = None
    unfreeze_blocks: int = 2
    dropout: float = 0.0
    seed: int = 0
    device: str = "auto"
    mixed_precision: str = "auto"
    feature_batch_size: int | None = None
    num_workers: int | None = None
    cache_dir: str | None = None
    checkpoint_dir: str | None = None
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    qat: bool = False  # after training, quantisation-aware fine-tuning into <out>/qat (edge_transfer.qat_train)
    qat_epochs: int = DEFAULT_QAT_EPOCHS

    def with_overrides(self, **overrides: Any) -> TrainConfig:
        """A copy with keyword overrides (`train(data, out=..., epochs=5)`); an unknown name is an InputError."""
        return replace_options(self, overrides, what="train")

    def resolved(self) -> TrainConfig:
        if self.strategy not in STRATEGIES:
            raise InputError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        spec = STRATEGY_SPECS[self.strategy]
        c = copy.copy(self)
        c.epochs = spec.epochs if c.epochs is None else int(c.epochs)
        c.lr = spec.lr if c.lr is None else float(c.lr)
        c.weight_decay = spec.weight_decay if c.weight_decay is None else float(c.weight_decay)
        if c.weight_decay is not None and c.weight_decay < 0:
            raise InputError(f"weight_decay must be >= 0, got {c.weight_decay}")
        c.patience = spec.patience if c.patience is None else int(c.patience)
        check_bounds({k: v for k, v in vars(c).items() if not (k in ("epochs", "lr") and c.strategy == "pretrained")})
        if c.batch_size < 1 or (c.feature_batch_size is not None and c.feature_batch_size < 1):
            raise InputError("batch sizes must be >= 1")
        if c.num_workers is not None and c.num_workers < 0:
            raise InputError(f"num_workers must be >= 0, got {c.num_workers}")
        if c.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise InputError(f"mixed_precision must be auto, no, bf16 or fp16, got {c.mixed_precision!r}")
        if c.qat and c.strategy == "pretrained":
            raise InputError("--qat fine-tunes a trained model; the pretrained strategy trains nothing")
        if c.features and c.strategy != "linear-probe":
            raise InputError(f"--features trains a linear probe on those layers; it needs --strategy linear-probe, not {c.strategy!r}")
        if c.strategy == "partial" and c.unfreeze_blocks < 1:
            raise InputError(f"unfreeze_blocks must be >= 1 for the partial strategy, got {c.unfreeze_blocks}")
        return c


@dataclass
class QatConfig:
    """Quantisation-aware fine-tuning of a finished run (`edge-transfer qat RUN`, `train --qat`). Every other
    training option (batch, weight decay, workers, seed) is the parent run's."""

    epochs: int = DEFAULT_QAT_EPOCHS
    lr: float = 3e-4  # the whole network at one rate: QAT adjusts a trained model, it does not retrain it
    freeze_scales_after: int | None = None  # epochs with moving scales; None: all but the last epoch
    target_cpu: str = "portable"  # runtimes.cpu.TARGET_CPUS: 7-bit weights unless the target has VNNI or sdot
    calibration_size: int = 256  # training images that set the initial scales
    data: str | None = None  # the parent's data, where it is now (default: where the parent run recorded it)
    device: str = "auto"
    mixed_precision: str = "auto"
    num_workers: int | None = None
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def with_overrides(self, **overrides: Any) -> QatConfig:
        return replace_options(self, overrides, what="qat")

    def checked(self) -> QatConfig:
        from runtimes.cpu import TARGET_CPUS

        check_bounds(vars(self))
        if self.epochs < 1:
            raise InputError(f"qat epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise InputError(f"qat lr must be > 0, got {self.lr}")
        if self.freeze_scales_after is not None and not 0 <= self.freeze_scales_after <= self.epochs:
            raise InputError(f"freeze_scales_after must be within 0..{self.epochs} (the epochs), got {self.freeze_scales_after}")
        if self.target_cpu not in TARGET_CPUS:
            raise InputError(f"target CPU must be one of {', '.join(TARGET_CPUS)}, got {self.target_cpu!r}")
        if self.calibration_size < 1:
            raise InputError(f"calibration_size must be >= 1, got {self.calibration_size}")
        return self

    @property
    def scales_move_for(self) -> int:
        return max(self.epochs - 1, 1) if self.freeze_scales_after is None else self.freeze_scales_after
