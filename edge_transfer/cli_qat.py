"""The `qat` command and train's --qat flags: quantisation-aware fine-tuning of a run (edge_transfer.qat_train)."""

from __future__ import annotations

import argparse
from typing import Any

from converters.options import TARGET_CPU_CHOICES
from runtimes.cli.output import pct, print_json
from runtimes.cli.writes import writes
from runtimes.options import options_from_namespace
from runtimes.outputs import OutputRule

from .config import QatConfig, TrainConfig
from .run_files import RUN

QAT_DESCRIPTION = (
    "Fine-tune a finished run with fake int8 quantisation (torch.ao): BatchNorm is folded, every Conv and Linear sees "
    "int8 inputs and weights, and the scales are learned for the first epochs and frozen for the last. The result is "
    "a new run (default RUN/qat) whose int8 bundles (export RUN/qat --format onnx-int8,openvino-int8,tensorrt-int8) "
    "carry those scales, with every Conv/Gemm in int8, no calibration. Use it when post-training int8 loses too much. "
    "Same loop as train: CPU or GPU, torchrun/accelerate launch, checkpoints after every epoch and --resume."
)


def add_train_qat_flags(t: argparse.ArgumentParser) -> None:
    t.add_argument(
        "--qat",
        action="store_true",
        default=TrainConfig.qat,
        help="after training, fine-tune quantisation-aware into OUT/qat (see 'edge-transfer qat --help')",
    )
    t.add_argument("--qat-epochs", type=int, default=TrainConfig.qat_epochs, help=f"with --qat: its epochs (default {TrainConfig.qat_epochs})")


def add_qat_parser(sub: Any) -> None:
    q = sub.add_parser("qat", help="quantisation-aware fine-tuning of a run, for int8 bundles that keep its accuracy", description=QAT_DESCRIPTION)
    q.add_argument("run", help="a finished training run directory (finetune, partial or linear-probe)")
    q.add_argument("--out", **writes(OutputRule("dir", RUN, may_lie_inside=("run",))), help="run directory to create (default RUN/qat)")
    q.add_argument("--data", help="the parent run's data folder, if it moved (same images: its seeded splits are rebuilt)")
    q.add_argument("--epochs", type=int, default=QatConfig.epochs, help=f"epochs (default {QatConfig.epochs}; each costs about 2x a finetune epoch)")
    q.add_argument("--lr", type=float, default=QatConfig.lr, help=f"learning rate of the whole network, cosine schedule (default {QatConfig.lr:g})")
    q.add_argument(
        "--freeze-scales-after",
        type=int,
        metavar="N",
        default=QatConfig.freeze_scales_after,
        help="epochs in which the scales move; later epochs train with them fixed (default: all but the last)",
    )
    q.add_argument(
        "--target-cpu",
        default=QatConfig.target_cpu,
        choices=TARGET_CPU_CHOICES,
        help="the CPU the int8 bundles will run on: portable (default) and x86-avx2 train 7-bit weights, which cannot "
        "saturate on x86 CPUs without VNNI; x86-vnni and arm64 train full 8-bit weights",
    )
    q.add_argument(
        "--calibration-size",
        type=int,
        default=QatConfig.calibration_size,
        help=f"training images that set the first scales (default {QatConfig.calibration_size})",
    )
    q.add_argument("--device", default=QatConfig.device, choices=["auto", "cpu", "cuda"], help="training device (default: CUDA when present)")
    q.add_argument("--mixed-precision", default=QatConfig.mixed_precision, choices=["auto", "no", "bf16", "fp16"], help="as for train")
    q.add_argument("--workers", dest="num_workers", type=int, default=QatConfig.num_workers, help="data-loading worker processes")
    q.add_argument("--resume", action="store_true", help="continue an interrupted qat run from OUT.checkpoint")
    q.add_argument("--overwrite", action="store_true", help="replace an existing OUT (and drop its checkpoint)")
    q.add_argument("--json", action="store_true", help="print the result as JSON")
    q.add_argument("--quiet", action="store_true", help="no progress or per-epoch lines")
    q.set_defaults(func=cmd_qat)


def qat_config_from_args(args: argparse.Namespace) -> QatConfig:
    return options_from_namespace(QatConfig, args, progress=not args.quiet and not args.json)


def report_qat(run: Any, as_json: bool) -> None:
    """One line (or JSON): where the QAT run went, its fake-quantised accuracy against the fp32 parent, its cost."""
    from .distributed import distributed_rank

    if distributed_rank() != 0:
        return
    q = run.config["qat"]
    parent = q.get("parent_metrics", {})
    if as_json:
        print_json({"run": str(run.path), "metrics": run.metrics, "fp32_metrics": parent, "epochs": q["epochs_run"], "seconds": run.seconds})
        return
    print(
        f"saved quantisation-aware run {run.path} in {run.seconds:.1f}s ({q['epochs_run']} epochs): test accuracy "
        f"{pct(run.metrics.get('test_accuracy'))} in int8 (fake-quantised) vs {pct(parent.get('test_accuracy'))} fp32; "
        f"export it with: edge-transfer export {run.path} --format onnx-int8,openvino-int8 --out BUNDLES"
    )


def cmd_qat(args: argparse.Namespace) -> int:
    from .api import qat

    report_qat(qat(args.run, out=args.out, config=qat_config_from_args(args)), args.json)
    return 0
