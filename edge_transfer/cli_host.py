"""Host commands of the CLI (train, export, demo): they import torch when they run."""

from __future__ import annotations

import argparse
from typing import Any

from .cli_output import err, pct, print_json


def cmd_train(args: argparse.Namespace) -> int:
    from .api import train

    run = train(
        args.data,
        out=args.out,
        backbone=args.backbone,
        strategy=args.strategy,
        image_size=args.image_size,
        interpolation=args.interpolation,
        crop_pct=args.crop_pct,
        epochs=args.epochs,
        lr=args.lr,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        unfreeze_blocks=args.unfreeze_blocks,
        seed=args.seed,
        skip_bad=args.skip_bad,
        device=args.device,
        mixed_precision=args.mixed_precision,
        num_workers=args.workers,
        feature_batch_size=args.feature_batch_size,
        cache_dir=args.cache_dir,
        progress=not args.quiet and not args.json,
        overwrite=args.overwrite,
        resume=args.resume,
        log=err if not args.quiet else (lambda m: None),
    )
    from .distributed import distributed_rank

    if distributed_rank() != 0:  # under accelerate launch / torchrun the main process reports
        return 0
    if args.json:
        print_json({"run": str(run.path), "metrics": run.metrics, "seconds": run.seconds})
    else:
        m = run.metrics
        acc = ", ".join(f"{k.replace('_accuracy', '')} {pct(v)}" for k, v in m.items() if k.endswith("_accuracy"))
        print(f"saved run {run.path} in {run.seconds:.1f}s" + (f": accuracy {acc}" if acc else ""))
    return 0


def _tensorrt_options(args: argparse.Namespace) -> dict[str, Any]:
    """The --trt-* flags that were given, as `export(tensorrt=...)` options."""
    options = {"opt_batch": args.trt_opt_batch, "max_batch": args.trt_max_batch, "workspace_mib": args.trt_workspace, "dla_core": args.trt_dla_core}
    options = {k: v for k, v in options.items() if v is not None}
    if args.trt_no_gpu_fallback:
        options["gpu_fallback"] = False
    if args.trt_hardware_compatible:
        options["hardware_compatible"] = True
    if args.trt_version_compatible:
        options["version_compatible"] = True
    return options


def cmd_export(args: argparse.Namespace) -> int:
    from converters.validate import format_table
    from runtimes.errors import ValidationFailed

    from .api import export

    quiet = args.quiet or args.json
    try:
        results = export(
            args.run,
            out=args.out,
            format=args.format,
            backbone=args.backbone,
            strategy=args.strategy,
            image_size=args.image_size,
            data=args.data,
            calibration_data=args.calibration_data,
            calibration_size=args.calibration_size,
            calibration_method=args.calibration_method,
            per_channel=not args.per_tensor,
            target_cpu=args.target_cpu,
            accuracy_aware=args.accuracy_aware,
            max_drop=args.max_drop,
            min_agreement=args.min_agreement,
            batch_size=args.batch_size,
            allow_failed_validation=args.allow_failed_validation,
            overwrite=args.overwrite,
            log=err if not quiet else (lambda m: None),
            tensorrt=_tensorrt_options(args),
            self_test_size=args.self_test_size,
        )
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
        print(f"wrote {r.path}" + (" (FAILED validation, written because --allow-failed-validation)" if not r.passed else ""))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import demo

    summary = demo(
        args.out,
        image_size=args.image_size,
        strategy=args.strategy,
        epochs=args.epochs,
        progress=not args.json,
        log=err if not args.json else (lambda m: None),
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
