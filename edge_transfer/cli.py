"""The host commands of the `edge-transfer` command line (train, qat, probe-layers, export, demo): they import torch
when they run. They join the device commands of `runtimes.cli` (the front door, in the runtime distribution)
through the `edge_transfer.commands` entry point."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from converters.options import (
    CALIBRATION_METHODS,
    FLOAT_FIRST_LAYERS,
    OUTPUTS,
    TARGET_CPU_CHOICES,
    ExportOptions,
    QuantizationOptions,
    TensorRTOptions,
)
from runtimes.bundle import BUNDLE
from runtimes.cli.writes import writes
from runtimes.engines.tensorrt_profile import DEFAULT_MAX_BATCH, DEFAULT_OPT_TOKENS
from runtimes.outputs import CACHE, OutputRule
from runtimes.preprocess import RESIZES

from .cli_help import EPILOG, FORMATS_HELP, RESIZE_HELP
from .cli_host import cmd_demo, cmd_export, cmd_train
from .cli_layers import add_probe_layers_parser
from .cli_qat import add_qat_parser, add_train_qat_flags
from .config import STRATEGIES, TrainConfig
from .run_files import RUN

DESCRIPTION = "Transfer-learn a pretrained vision or language model on your data, export it as a validated bundle, run it on the device."


def _interrupted(args: argparse.Namespace) -> str:
    resumable = args.command == "qat" or (args.command == "train" and args.strategy in ("finetune", "partial"))
    return "; continue with the same command plus --resume" if resumable else "; no run was saved" if args.command == "train" else ""


def add_host_parsers(parser: argparse.ArgumentParser, sub: Any) -> None:
    """Add the host commands to the `edge-transfer` parser (the `edge_transfer.commands` entry point)."""
    parser.description = DESCRIPTION
    parser.epilog = EPILOG + (parser.epilog or "")
    t = sub.add_parser(
        "train",
        help="adapt a pretrained backbone to a dataset; writes a run directory",
        description="Transfer-learn and save a run directory (model.safetensors + config.json with metrics).",
    )
    t.add_argument(
        "--data",
        help="an image folder (one sub-folder per class), 'digits' (built-in demo data), or text: class folders of .txt files "
        "or a CSV/TSV/JSONL table (detected from what it holds; text trains all-MiniLM-L6-v2 by default) (required)",
    )
    t.add_argument(
        "--backbone",
        default=TrainConfig.backbone,
        help="efficientnet_lite0 (default, offline ImageNet weights), timm:<name>, torchvision:<name>, a run dir, or a .safetensors "
        "(or torch .pt/.pth state dict, loaded weights-only) file with a config.json beside it",
    )
    t.add_argument(
        "--strategy",
        default=TrainConfig.strategy,
        choices=STRATEGIES,
        help="linear-probe: frozen backbone, cached features, new head (default); finetune: whole network; "
        "partial: last --unfreeze-blocks blocks; pretrained: source model as it is",
    )
    t.add_argument("--out", required=True, **writes(OutputRule("dir", RUN)), help="run directory to create")
    t.add_argument(
        "--text-column", default=TrainConfig.text_column, help="text tables (CSV/TSV/JSONL): the text's column, a name or 0-based position"
    )
    t.add_argument("--label-column", default=TrainConfig.label_column, help="text tables: the label's column (default label)")
    t.add_argument("--max-tokens", type=int, default=TrainConfig.max_tokens, help="text: cut each text at this many tokens (default 256)")
    t.add_argument("--image-size", type=int, help="model input size in pixels (default: the backbone's, 224 for efficientnet_lite0)")
    t.add_argument(
        "--features",
        metavar="LAYER",
        help="linear probe on intermediate layers: a block (blocks.3), a negative index (-1 final, -2 the last block) or a "
        "comma-separated list (one starting with an index: --features=-2,-3), pooled and concatenated; the bundle is cut after "
        "the deepest one (see edge-transfer probe-layers)",
    )
    t.add_argument("--interpolation", choices=["bilinear", "bicubic", "nearest"], help="resize filter (default: the backbone's)")
    t.add_argument("--resize", choices=list(RESIZES), default=TrainConfig.resize, help=RESIZE_HELP)
    jpeg = "decode every JPEG at full size (default: JPEGs several times the input's size decode at 1/2-1/8, here and on the device)"
    t.add_argument("--full-jpeg-decode", dest="jpeg_draft", action="store_false", default=TrainConfig.jpeg_draft, help=jpeg)
    t.add_argument(
        "--crop-pct",
        type=float,
        default=TrainConfig.crop_pct,
        help=f"centre-crop share of the resized image (default {TrainConfig.crop_pct}: whole image)",
    )
    t.add_argument(
        "--epochs",
        "--max-iter",
        dest="epochs",
        type=int,
        help="finetune/partial: epochs (default 10); linear-probe: --max-iter, L-BFGS iterations per L2 strength (default 300)",
    )
    t.add_argument("--lr", type=float, help="head learning rate (default 1e-3); the backbone gets 0.1x")
    t.add_argument(
        "--weight-decay",
        type=float,
        help="weight decay; linear-probe: the L2 strength (default: picked on val from a grid, printed and saved as chosen_weight_decay)",
    )
    t.add_argument(
        "--batch-size",
        type=int,
        default=TrainConfig.batch_size,
        help=f"global batch size, split across processes under accelerate launch/torchrun (default {TrainConfig.batch_size})",
    )
    t.add_argument(
        "--unfreeze-blocks",
        type=int,
        default=TrainConfig.unfreeze_blocks,
        help=f"partial: how many of the last blocks to train (default {TrainConfig.unfreeze_blocks})",
    )
    t.add_argument(
        "--val-fraction",
        type=float,
        default=TrainConfig.val_fraction,
        metavar="F",
        help=f"share of each class held out for validation: early stopping, the L2 sweep and the int8 accuracy-aware "
        f"search (default {TrainConfig.val_fraction})",
    )
    t.add_argument(
        "--test-fraction",
        type=float,
        default=TrainConfig.test_fraction,
        metavar="F",
        help=f"share of each class held out for the test split that judges every exported bundle (default "
        f"{TrainConfig.test_fraction}; with few images, a larger share lets the gate judge a small drop)",
    )
    t.add_argument("--seed", type=int, default=TrainConfig.seed, help=f"seed for splits, initialisation and shuffling (default {TrainConfig.seed})")
    t.add_argument(
        "--skip-bad", action="store_true", default=TrainConfig.skip_bad, help="leave unreadable images out with a warning instead of stopping"
    )
    t.add_argument("--device", default=TrainConfig.device, choices=["auto", "cpu", "cuda"], help="training device (default: CUDA when present)")
    t.add_argument(
        "--mixed-precision",
        default=TrainConfig.mixed_precision,
        choices=["auto", "no", "bf16", "fp16"],
        help="auto (default): bf16 on GPUs that support it, else fp16 with loss scaling; none on the CPU",
    )
    t.add_argument(
        "--workers",
        dest="num_workers",
        type=int,
        default=TrainConfig.num_workers,
        help="data-loading worker processes (default: 0 on the CPU, up to 8 per GPU)",
    )
    t.add_argument("--feature-batch-size", type=int, help="linear-probe: batch for computing the feature cache (default 64 on the CPU, 256 on a GPU)")
    t.add_argument("--cache-dir", **writes(OutputRule("cache", CACHE)), help="feature cache (default $EDGE_TRANSFER_CACHE or ~/.cache/edge-transfer)")
    t.add_argument(
        "--resume", action="store_true", help="finetune/partial: continue an interrupted run from OUT.checkpoint (written after every epoch)"
    )
    t.add_argument("--overwrite", action="store_true", help="replace an existing run directory (and drop its checkpoint)")
    add_train_qat_flags(t)
    t.add_argument("--json", action="store_true", help="print the result as JSON")
    t.add_argument("--quiet", action="store_true", help="no progress or per-epoch lines")
    t.set_defaults(func=cmd_train)

    add_qat_parser(sub)
    add_probe_layers_parser(sub)

    e = sub.add_parser(
        "export",
        help="export a run (or a pretrained backbone as it is) to validated bundles, one per format",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export to one bundle per format. Each is loaded through the device runtime and compared with torch on "
        "held-out data; a bundle whose accuracy drops more than --max-drop points (fp32/fp16: whose top-1 agreement is "
        "below --min-agreement; int8 on unlabelled data: see --min-agreement) is not written. int8 formats that fail "
        "after post-training quantisation try the accuracy-aware search next (--no-fallback: do not).",
        epilog=FORMATS_HELP,
    )
    e.add_argument("run", nargs="?", help="training run directory (omit with --backbone)")
    e.add_argument("--backbone", help="export this backbone's source model as it is (with --strategy pretrained)")
    e.add_argument("--strategy", default=ExportOptions.strategy, help="with --backbone: only 'pretrained'")
    e.add_argument(
        "--output",
        default=ExportOptions.output,
        choices=OUTPUTS,
        help="logits: a classifier (default); embedding: L2-normalised features, no classes, for a gallery (enroll / identify); "
        "extensible: a classifier that also outputs its head's features, so a device can add classes (imprint)",
    )
    e.add_argument("--features", metavar="LAYER", help="with --backbone --output embedding: the layers it comes from, as train --features")
    e.add_argument("--format", default=ExportOptions.format, help=f"one format or a comma-separated list (default {ExportOptions.format}; see below)")
    e.add_argument(
        "--out",
        required=True,
        **writes(OutputRule("outputs", holds=(BUNDLE,))),
        help="bundle directory to create; with several formats, one sub-directory per format",
    )
    e.add_argument("--image-size", type=int, help="with --backbone: input size (default: the backbone's)")
    e.add_argument("--data", help="held-out data for validation (default: the run's own test split; digits for --backbone)")
    e.add_argument("--text-column", help="text tables given as --data/--calibration-data: the text's column (default: the run's, or text)")
    e.add_argument("--label-column", help="text tables given as --data/--calibration-data: the label's column (default: the run's, or label)")
    e.add_argument(
        "--max-drop",
        type=float,
        default=ExportOptions.max_drop,
        help=f"largest accuracy drop vs torch fp32, in points (default {ExportOptions.max_drop})",
    )
    e.add_argument(
        "--min-agreement",
        type=float,
        help="minimum top-1 agreement with torch on every image (default with labels: 0.995 fp32, 0.99 fp16; int8 is judged on "
        "the accuracy drop; without labels the model knows, every precision is judged on agreement where torch is "
        "confident, top-5 and logit cosine)",
    )
    q = e.add_argument_group("int8 quantisation")
    q.add_argument(
        "--calibration-size",
        type=int,
        default=ExportOptions.calibration_size,
        help=f"calibration images drawn (seeded) from the training split (default {ExportOptions.calibration_size})",
    )
    q.add_argument("--calibration-data", help="calibrate on this image folder (or 'digits') instead of the training split")
    q.add_argument(
        "--calibration-method",
        default=QuantizationOptions.method,
        choices=CALIBRATION_METHODS,
        help="onnx-int8 activation ranges (default minmax; percentile is slower, sometimes more accurate)",
    )
    q.add_argument(
        "--accuracy-aware",
        action="store_true",
        help="start on the second rung: keep the most sensitive layers in float until the int8 model passes on the val "
        "split (NNCF accuracy control for OpenVINO)",
    )
    q.add_argument(
        "--no-fallback",
        dest="fallback",
        action="store_false",
        default=QuantizationOptions.fallback,
        help="onnx-int8/openvino-int8: refuse a bundle that fails after post-training quantisation instead of climbing "
        "the ladder (by default the accuracy-aware search is tried next, and the table's 'rung' column says which passed)",
    )
    q.add_argument(
        "--min-int8-share",
        type=float,
        default=QuantizationOptions.min_int8_share,
        metavar="FRACTION",
        help=f"refuse an int8 bundle whose int8 layers do less than this share of the multiply-adds (default "
        f"{QuantizationOptions.min_int8_share}; the table's 'int8 MACs' column shows it)",
    )
    q.add_argument(
        "--target-cpu",
        default=QuantizationOptions.target_cpu,
        choices=TARGET_CPU_CHOICES,
        help="the CPU the int8 bundles will run on, not this host: portable (default) and x86-avx2 use 7-bit "
        "weights that cannot saturate on CPUs without VNNI; x86-vnni and arm64 use full 8-bit weights, and "
        "a bundle made for them warns at load (and fails 'check') on an x86 CPU without VNNI",
    )
    q.add_argument(
        "--float-first-layers",
        type=int,
        default=QuantizationOptions.float_first_layers,
        metavar="N",
        help=f"onnx-int8/openvino-int8: keep the first N weight layers (stem, first depthwise and pointwise conv) in float "
        f"(default {FLOAT_FIRST_LAYERS['onnx-int8']} for onnx-int8, {FLOAT_FIRST_LAYERS['openvino-int8']} for openvino-int8: "
        "they cause most of the int8 loss; 0: quantise every layer)",
    )
    q.add_argument(
        "--per-tensor",
        dest="per_channel",
        action="store_false",
        default=QuantizationOptions.per_channel,
        help="onnx-int8: one scale per weight tensor instead of per channel (usually much worse)",
    )
    r = e.add_argument_group("TensorRT engine settings (tensorrt formats; the engine is built on the device)")
    trt = TensorRTOptions()  # every --trt-* flag sets the TensorRTOptions field of its name (dest trt_<field>)
    r.add_argument(
        "--trt-max-batch",
        type=int,
        default=trt.max_batch,
        help=f"largest batch the engine accepts (default {DEFAULT_MAX_BATCH}; --batch-size fixes it)",
    )
    r.add_argument("--trt-opt-batch", type=int, default=trt.opt_batch, help="batch the engine is tuned for (default 1)")
    r.add_argument(
        "--trt-opt-tokens",
        type=int,
        default=trt.opt_tokens,
        help=f"text bundles: the length the engine is tuned for (default {DEFAULT_OPT_TOKENS}, or the token limit if lower); it runs 1..limit",
    )
    r.add_argument(
        "--trt-workspace",
        dest="trt_workspace_mib",
        type=int,
        metavar="MIB",
        default=trt.workspace_mib,
        help=f"builder workspace limit in MiB (default {trt.workspace_mib})",
    )
    r.add_argument("--trt-dla-core", type=int, default=trt.dla_core, help="run on this DLA core (Jetson Xavier/Orin)")
    r.add_argument(
        "--trt-no-gpu-fallback",
        dest="trt_gpu_fallback",
        action="store_false",
        default=trt.gpu_fallback,
        help="with --trt-dla-core: fail instead of running unsupported layers on the GPU",
    )
    r.add_argument(
        "--trt-hardware-compatible", action="store_true", default=trt.hardware_compatible, help="engine runs on any GPU of Ampere or newer (slower)"
    )
    r.add_argument(
        "--trt-version-compatible",
        action="store_true",
        default=trt.version_compatible,
        help="engine runs on this or a newer TensorRT (needs the device's lean runtime library)",
    )
    e.add_argument("--batch-size", type=int, help="fix the batch dimension to N (static shapes, needed for NPUs); default dynamic")
    e.add_argument(
        "--self-test-size",
        type=int,
        default=ExportOptions.self_test_size,
        help="golden images (seeded draw from the held-out data) stored with torch reference logits for 'edge-transfer check' "
        f"(default {ExportOptions.self_test_size}; 0: none)",
    )
    e.add_argument("--allow-failed-validation", action="store_true", help="write bundles even if validation fails (marked failed)")
    e.add_argument("--overwrite", action="store_true", help="replace existing bundles (atomically)")
    e.add_argument("--sign-key", metavar="KEY", help="sign each bundle with this private key (from keygen) before it is published")
    e.add_argument("--skip-bad", action="store_true", help="leave unreadable images of --data / --calibration-data out instead of stopping")
    e.add_argument(
        "--skip-existing",
        action="store_true",
        help="keep the formats already exported at --out (checked: complete, same model) and export the rest: completes an interrupted export",
    )
    e.add_argument("--json", action="store_true", help="print every format's result as JSON")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_export)

    d = sub.add_parser(
        "demo",
        help="digits -> efficientnet_lite0 linear probe -> ONNX bundle -> validated predictions",
        description="The whole pipeline on built-in data, offline.",
    )
    d.add_argument(
        "--out",
        default="demo-output",
        **writes(OutputRule("outputs", holds=(RUN, BUNDLE))),
        help="where the run and bundle go (default demo-output/)",
    )
    d.add_argument("--strategy", default="linear-probe", choices=["linear-probe", "finetune", "partial"])
    d.add_argument("--image-size", type=int, default=128, help="input size (default 128)")
    d.add_argument("--epochs", type=int)
    d.add_argument("--json", action="store_true", help="machine-readable summary on stdout")
    d.set_defaults(func=cmd_demo)
    for name in ("train", "qat"):  # --json keeps their per-epoch lines: the only sign of life in a long run
        sub.choices[name].set_defaults(json_keeps_progress=True, interrupted=_interrupted)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, device and host commands (`runtimes.cli.build_parser`)."""
    from runtimes.cli import build_parser as build

    return build()


def main(argv: Sequence[str] | None = None) -> int:
    from runtimes.cli import main as run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
