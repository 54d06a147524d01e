"""Host commands of the CLI (train, export, demo): they import torch when they run."""

from __future__ import annotations

import argparse
import dataclasses

from converters.options import QUANTIZATION_KEYWORDS, ExportOptions, TensorRTOptions
from runtimes.cli.output import pct, print_json
from runtimes.errors import InputError
from runtimes.options import options_from_namespace

from .config import TrainConfig


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from the train flags, each `dest` a field name: no option is relayed by hand, and the defaults are
    checked against the fields' (tests/test_cli_and_device.py)."""
    return options_from_namespace(TrainConfig, args, progress=not args.quiet and not args.json)


def export_options_from_args(args: argparse.Namespace) -> ExportOptions:
    """ExportOptions from the export flags: the quantisation flags by their keyword names, --trt-* as TensorRTOptions."""
    tensorrt = TensorRTOptions(**{f.name: getattr(args, f"trt_{f.name}") for f in dataclasses.fields(TensorRTOptions)})
    flat = {k: getattr(args, k) for k in QUANTIZATION_KEYWORDS if hasattr(args, k)}
    return options_from_namespace(ExportOptions, args).with_overrides(tensorrt=tensorrt, **flat)


def cmd_train(args: argparse.Namespace) -> int:
    from .api import train

    if args.data is None:
        raise InputError("train needs --data: an image folder with one sub-folder per class, or --data digits for the built-in demo data")
    run = train(args.data, out=args.out, config=train_config_from_args(args))
    from .distributed import distributed_rank

    if distributed_rank() != 0:  # under accelerate launch / torchrun the main process reports
        return 0
    if args.json:
        qat = {"qat": {"run": str(run.qat.path), "metrics": run.qat.metrics, "seconds": run.qat.seconds}} if run.qat is not None else {}
        print_json({"run": str(run.path), "metrics": run.metrics, "seconds": run.seconds, **qat})
    else:
        m = run.metrics
        acc = ", ".join(f"{k.replace('_accuracy', '')} {pct(v)}" for k, v in m.items() if k.endswith("_accuracy") and v is not None)
        print(f"saved run {run.path} in {run.seconds:.1f}s" + (f": accuracy {acc}" if acc else ""))
    if run.qat is not None:
        from .cli_qat import report_qat

        report_qat(run.qat, False)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from converters.validate import format_table
    from runtimes.errors import ValidationFailed

    from .api import export

    try:
        results = export(args.run, out=args.out, options=export_options_from_args(args))
    except ValidationFailed as exc:
        results = getattr(exc, "results", None)
        if not args.json or results is None:
            raise
        print_json({"out": args.out, "passed": False, "formats": [r.summary() for r in results]})
        return 1
    from .distributed import distributed_rank

    if distributed_rank() != 0:  # launched on several processes: rank 0 exported and reports
        return 0
    if args.json:
        print_json({"out": args.out, "passed": all(r.passed for r in results), "formats": [r.summary() for r in results]})
        return 0
    print(format_table([r.summary() for r in results]))
    for r in results:
        verb = "kept" if r.kept else "wrote"
        print(f"{verb} {r.path}" + (" (FAILED validation, written because --allow-failed-validation)" if not r.passed else ""))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import demo

    summary = demo(
        args.out,
        image_size=args.image_size,
        strategy=args.strategy,
        epochs=args.epochs,
        progress=not args.json,
    )
    if args.json:
        print_json(summary)
        return 0
    m, v, t = summary["metrics"], summary["validation"], summary["timings_s"]
    print()
    print(f"edge-transfer demo: digits -> {summary['backbone']} ({summary['strategy']}, {summary['image_size'][0]} px) -> ONNX bundle")
    print(f"  test accuracy (torch)   {pct(m.get('test_accuracy'))} on {m.get('test_count')} held-out images")
    print(
        f"  bundle accuracy (ORT)   {pct(v['artifact_accuracy'])}; top-1 agreement {pct(v['top1_agreement'])}; "
        f"max |logit diff| {v['max_abs_logit_diff']:.2g}"
    )
    print(
        f"  bundle                  {summary['bundle']} ({summary['bundle_bytes'] / 1e6:.1f} MB), "
        f"runs on {summary['runtime']['backend']} {summary['runtime']['device']}"
    )
    print(
        "  predictions             "
        + ", ".join(f"{p['image']}: {p['predicted']} (true {p['true']}, {p['score']:.0%})" for p in summary["predictions"])
    )
    print(
        f"  timings                 train {t['train']:.1f}s, export+validate {t['export_and_validate']:.1f}s, "
        f"load {t['load_bundle']:.2f}s, predict 5 {t['predict_5_images']:.3f}s"
    )
    return 0
