"""The `edge-transfer` command line. Host commands (train, export, demo) import torch when they run;
device commands (predict, inspect, bench, build-engine) need only `runtimes` and one backend."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from runtimes.errors import EdgeTransferError

from .config import DEFAULT_BACKBONE, STRATEGIES, TrainConfig

PRECISION_CHOICES = ("f32", "f16", "bf16")
PRECISION_HELP = (
    "compute in this precision instead of the one the bundle was validated at (OpenVINO: bf16/f16 where the "
    "device supports them; the precision actually used is reported)"
)

EPILOG = """examples:
  edge-transfer demo
  edge-transfer train --data digits --strategy linear-probe --out runs/digits
  edge-transfer train --data my_photos/ --strategy finetune --epochs 5 --image-size 160 --out runs/photos
  edge-transfer train --data my_photos/ --strategy finetune --epochs 5 --image-size 160 --out runs/photos --resume
  torchrun --nproc_per_node 4 -m edge_transfer train --data my_photos/ --strategy finetune --out runs/photos
  edge-transfer export runs/digits --format onnx --out bundles/digits
  edge-transfer export runs/digits --format onnx-int8,openvino-int8 --accuracy-aware --out bundles/digits-int8
  edge-transfer export --backbone efficientnet_lite0 --strategy pretrained --format onnx --out bundles/imagenet
  edge-transfer predict bundles/imagenet cat.jpg --top-k 3
  edge-transfer inspect bundles/digits --json
  edge-transfer check bundles/digits --inference-precision bf16
  edge-transfer bench bundles/digits-all/onnx bundles/digits-all/onnx-int8 --batch 1,8
"""


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _pct(x: Any) -> str:
    """A fraction as a percentage; a manifest value that is not a number is shown marked, never a traceback."""
    if x is None:
        return "n/a"
    return f"{100 * x:.2f}%" if _is_number(x) else _bad(x)


def _num(x: Any, spec: str = ".2g") -> str:
    if x is None:
        return "n/a"
    return format(x, spec) if _is_number(x) else _bad(x)


def _bad(x: Any) -> str:
    return f"<malformed: {str(x)[:40]!r}>"


def _section(d: Any, key: str) -> dict[str, Any]:
    """An optional object inside an untrusted manifest section, {} when absent or not an object."""
    value = d.get(key) if isinstance(d, dict) else None
    return value if isinstance(value, dict) else {}


# ------------------------------------------------------------------------------------------------ commands


def _precision_option(args: argparse.Namespace) -> dict[str, Any]:
    """--inference-precision as a backend option (only when given: backends pin the validated one otherwise)."""
    return {"inference_precision": args.inference_precision} if getattr(args, "inference_precision", None) else {}


def cmd_check(args: argparse.Namespace) -> int:
    import runtimes
    from runtimes.cpu import cpu_features

    with runtimes.load(args.bundle, device=args.device, **_precision_option(args)) as predictor:
        result = predictor.self_test(raise_on_failure=False)
        info = predictor.describe()
        warnings = list(predictor.warnings)
    cpu = cpu_features()
    failures = [] if result.passed else [result.summary()]
    failures += warnings
    report = {
        "bundle": args.bundle,
        "backend": info["backend"],
        "device": info["device"],
        "precision": info["precision"],
        "inference_precision": info.get("inference_precision"),
        "cpu": cpu.to_dict(),
        "self_test": result.to_dict(),
        "warnings": warnings,
        "passed": not failures,
    }
    if args.json:
        _print_json(report)
    else:
        print(f"bundle     {args.bundle} ({info['format']}, {info['precision']})")
        print(f"runtime    {info['backend']} on {info['device']}, computing in {info.get('inference_precision') or 'unknown precision'}")
        print(f"cpu        {cpu.summary()}")
        print(result.summary())
        for w in warnings:
            print(f"warning    {w}")
        print("PASS" if not failures else "FAIL")
    if failures:
        _err(f"error: {args.bundle}: " + "; ".join(failures))
        return 1
    return 0


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
        log=_err if not args.quiet else (lambda m: None),
    )
    from .distributed import distributed_rank

    if distributed_rank() != 0:  # under accelerate launch / torchrun the main process reports
        return 0
    if args.json:
        _print_json({"run": str(run.path), "metrics": run.metrics, "seconds": run.seconds})
    else:
        m = run.metrics
        acc = ", ".join(f"{k.replace('_accuracy', '')} {_pct(v)}" for k, v in m.items() if k.endswith("_accuracy"))
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
            log=_err if not quiet else (lambda m: None),
            tensorrt=_tensorrt_options(args),
            self_test_size=args.self_test_size,
        )
    except ValidationFailed as exc:
        results = getattr(exc, "results", None)
        if not args.json or results is None:
            raise
        _print_json({"out": args.out, "passed": False, "formats": [r.summary() for r in results]})
        return 1
    from .distributed import distributed_rank

    if distributed_rank() != 0:  # launched on several processes: rank 0 exported and reports
        return 0
    if args.json:
        _print_json({"out": args.out, "passed": all(r.passed for r in results), "formats": [r.summary() for r in results]})
        return 0
    print(format_table([r.summary() for r in results]))
    for r in results:
        print(f"wrote {r.path}" + (" (FAILED validation, written because --allow-failed-validation)" if not r.passed else ""))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import runtimes

    predictor = runtimes.load(args.bundle, device=args.device, **_precision_option(args))
    results = predictor.predict(args.images, top_k=args.top_k)
    if args.json:
        _print_json(
            {
                "bundle": args.bundle,
                "runtime": predictor.describe(),
                "predictions": [{"image": img, "top_k": [c.to_dict() for c in r]} for img, r in zip(args.images, results)],
            }
        )
        return 0
    for img, r in zip(args.images, results):
        print(img)
        for c in r:
            print(f"  {c.score:7.2%}  {c.label}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from runtimes.bundle import open_bundle

    bundle = open_bundle(args.bundle)
    m = bundle.manifest
    if args.json:
        _print_json(dict(m.raw, verified=True))
        return 0
    v = m.validation or {}
    model = _section(m.raw, "model")
    print(f"bundle      {bundle.path}  (verified: {len(m.files)} file(s), {bundle.size_bytes / 1e6:.2f} MB)")
    print(f"model       {m.backend} / {m.format} / {m.precision}, created {m.created}")
    print(f"input       {m.inputs[0].name} {m.inputs[0].dtype} {list(m.inputs[0].shape)} {m.inputs[0].layout or ''}")
    print(f"output      {m.outputs[0].name} {m.outputs[0].dtype} {list(m.outputs[0].shape)}")
    p = m.preprocessing
    print(
        f"preprocess  {p.input_size[0]}x{p.input_size[1]} {p.interpolation}, crop {p.crop_pct}, mean {p.mean}, std {p.std}, "
        f"in graph: {p.normalize_in_graph}"
    )
    print(f"labels      {len(m.labels)}: {', '.join(m.labels[:5])}{' ...' if len(m.labels) > 5 else ''}")
    src = m.source
    print(
        f"source      {src.get('backbone', '?')} ({src.get('weights', '?')}), strategy {src.get('strategy', '?')}, licence {src.get('license', '?')}"
    )
    cal = m.calibration
    if cal:
        print(
            f"calibration {cal.get('count')} images from {cal.get('split')} of {cal.get('source')} ({cal.get('method')}), "
            f"items sha256 {str(cal.get('items_sha256'))[:12]}"
        )
    conversion = model.get("conversion")
    if conversion is not None and not isinstance(conversion, dict):
        print(f"conversion  {_bad(conversion)}")
    conversion = _section(model, "conversion")
    floats = conversion.get("float_layers") or conversion.get("float_nodes")
    if isinstance(floats, list) and floats:
        print(f"in float    {len(floats)} layer(s): {', '.join(map(str, floats[:3]))}{' ...' if len(floats) > 3 else ''}")
    if v:
        print(
            f"validation  {'passed' if v.get('passed') is True else 'FAILED'} on {v.get('split')} ({v.get('count')} images): "
            f"agreement {_pct(v.get('top1_agreement'))}, max |diff| {_num(v.get('max_abs_logit_diff'))}, "
            f"accuracy torch {_pct(v.get('torch_accuracy'))} / bundle {_pct(v.get('artifact_accuracy'))}"
            + (
                f", drop {_num(100 * v['accuracy_drop'] if _is_number(v['accuracy_drop']) else v['accuracy_drop'], '+.2f')} pt"
                if v.get("accuracy_drop") is not None
                else ""
            )
            + (f", at {v['inference_precision']}" if isinstance(v.get("inference_precision"), str) else "")
        )
    target = model.get("target_cpu")
    if isinstance(target, dict):
        print(f"target cpu  {target.get('name')} ({'7-bit' if target.get('reduce_range') else 'full 8-bit'} weights)")
    st = m.raw.get("self_test")
    if isinstance(st, dict):
        print(f"self-test   {st.get('count')} golden images vs {st.get('reference_from')} (edge-transfer check BUNDLE)")
    else:
        print("self-test   none (exported before self-tests; re-export to get one)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .api import demo

    summary = demo(
        args.out,
        image_size=args.image_size,
        strategy=args.strategy,
        epochs=args.epochs,
        progress=not args.json,
        log=_err if not args.json else (lambda m: None),
    )
    if args.json:
        _print_json(summary)
        return 0
    m, v, t = summary["metrics"], summary["validation"], summary["timings_s"]
    print()
    print(f"edge-transfer demo: digits -> {summary['backbone']} ({summary['strategy']}, {summary['image_size'][0]} px) -> ONNX bundle")
    print(f"  test accuracy (torch)   {_pct(m.get('test_accuracy'))} on {m.get('test_count')} held-out images")
    print(
        f"  bundle accuracy (ORT)   {_pct(v['artifact_accuracy'])}; top-1 agreement {_pct(v['top1_agreement'])}; "
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


def _int_list(spec: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise EdgeTransferError(f"{what} must be positive integers separated by commas, got {spec!r}")
    return values


def cmd_bench(args: argparse.Namespace) -> int:
    from runtimes.bench import bench_bundle, labelled_accuracy

    from .bench_report import comparison_rows, format_table, machine_context, plot, write_csv, write_json

    batches = _int_list(args.batch, "--batch")
    options: dict[str, Any] = {}
    if args.threads:
        options["threads"] = args.threads
    if args.hint:
        options["hint"] = args.hint
    if args.streams:
        options["streams"] = args.streams
    options.update(_precision_option(args))
    self_tests = _bench_self_tests(args.bundles, args.device, options, args.ignore_self_test)
    if self_tests is None:
        return 1
    images = None
    if args.images:
        from runtimes.preprocess import read_image

        images = [read_image(path) for path in args.images]
    bar = None
    results = []
    interrupted = False
    for path in args.bundles:
        progress = None
        if not args.quiet and not args.json_stdout:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                bar = tqdm(total=None if args.duration else args.iterations, desc=f"bench {path}", unit="it", file=sys.stderr, leave=False)

                def progress(done: int, total: int | None, _bar=bar) -> None:
                    _bar.update(done - _bar.n)

        try:
            found = bench_bundle(
                path,
                batches=batches,
                device=args.device,
                backend_options=options,
                mode=args.mode,
                iterations=None if args.duration else args.iterations,
                duration=args.duration,
                warmup=args.warmup,
                images=images,
                progress=progress,
            )
        except KeyboardInterrupt:
            found, interrupted = [], True
        finally:
            if bar is not None:
                bar.close()
        if args.data and found:
            import runtimes

            with runtimes.load(path, device=args.device, **options) as predictor:
                accuracy = labelled_accuracy(predictor, args.data)
            for r in found:
                r.accuracy = accuracy
        for r in found:
            r.self_test = self_tests[path]
        results.extend(found)
        if interrupted or any(r.interrupted for r in found):
            interrupted = True
            break
    rows = comparison_rows(results)
    if args.json:
        write_json(results, rows, args.json, machine_context())
    if args.csv:
        write_csv(rows, args.csv)
    if args.plot and results:
        plot(results, args.plot)
    if args.json_stdout:
        _print_json({"machine": machine_context(), "rows": rows, "interrupted": interrupted})
    else:
        print(format_table(rows))
        for r in results:
            plain = f"; plain backend call p50 {r.plain.p50:.3f} ms" if r.plain else ""
            print(
                f"{r.export_format or r.precision} batch {r.batch}: load {r.load_s:.2f} s, first call {r.first_ms:.1f} ms, "
                f"{r.warmup_iterations} warm-up calls, {r.latency.count} timed{plain}",
                file=sys.stderr,
            )
        if interrupted:
            print("interrupted: the table shows what was measured before Ctrl-C", file=sys.stderr)
    return 130 if interrupted else 0


def _bench_self_tests(bundles: Sequence[str], device: str | None, options: dict[str, Any], ignore: bool) -> dict[str, str] | None:
    """Run each bundle's self-test in the configuration about to be measured; None (after one `error:` line) when
    one fails and `ignore` is off: a speed is not worth reporting for results that differ from the validated ones."""
    import runtimes

    statuses, failed = {}, []
    for path in bundles:
        with runtimes.load(path, device=device, **options) as predictor:
            result = predictor.self_test(raise_on_failure=False)
        statuses[path] = result.status
        if result.status == "fail":
            failed.append(f"{path}: {result.summary()}")
            if ignore:
                _err(f"warning: {path}: {result.summary()} (measured anyway: --ignore-self-test)")
        elif result.status == "missing":
            _err(f"note: {path}: {result.summary()}")
    if failed and not ignore:
        _err("error: not measuring configurations whose self-test fails (--ignore-self-test measures them anyway): " + "; ".join(failed))
        return None
    return statuses


def cmd_build_engine(args: argparse.Namespace) -> int:
    import time

    import runtimes
    from runtimes.bench import labelled_accuracy

    manifest = runtimes.read_manifest(args.bundle)
    if manifest.backend != "tensorrt":
        raise EdgeTransferError(f"{args.bundle}: a {manifest.backend} bundle; build-engine needs one exported with --format tensorrt[-fp16|-int8]")
    if manifest.format != "onnx":
        raise EdgeTransferError(f"{args.bundle}: already carries a built engine ({manifest.format}); build-engine needs the ONNX bundle")
    t0 = time.perf_counter()
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    with runtimes.load(args.bundle, cache_dir=args.cache_dir, log=say) as predictor:
        info = predictor.describe()
        info["load_seconds"] = round(time.perf_counter() - t0, 2)
        if args.data:
            info["accuracy"] = labelled_accuracy(predictor, args.data)
        if args.out:
            from pathlib import Path

            from runtimes.tensorrt_engine import write_engine_bundle

            engine = Path(info["engine"])
            plan = (engine / "engine.plan" if engine.is_dir() else engine).read_bytes()
            target = predictor.target  # type: ignore[attr-defined]  # a TensorRT predictor's running target
            write_engine_bundle(predictor.bundle, plan, target, args.out, overwrite=args.overwrite)
            info["engine_bundle"] = args.out
    if args.json:
        _print_json(info)
    else:
        trt = info["tensorrt"]
        print(
            f"engine for {trt['gpu_name']} (sm {trt['compute_capability']}, TensorRT {trt['tensorrt_version']}), "
            f"{info['precision']}, batch {info['profile']['min']}-{info['profile']['max']}: {info['engine']} "
            f"(ready in {info['load_seconds']} s)"
        )
        if "engine_bundle" in info:
            print(f"wrote engine bundle {info['engine_bundle']} (loads only on this TensorRT version and this GPU model)")
        if "accuracy" in info:
            exported = (manifest.validation or {}).get("artifact_accuracy")
            print(
                f"accuracy on {args.data}: {_pct(info['accuracy'])}"
                + (f" (the ONNX checked at export: {_pct(exported)})" if exported is not None else "")
            )
    return 0


# ------------------------------------------------------------------------------------------------ parser

FORMATS_HELP = """formats:
  onnx                ONNX fp32 (ONNX Runtime)
  onnx-fp16           ONNX with fp16 weights and compute; uint8 in, fp32 logits out
  onnx-int8           ONNX static int8: QDQ, per-channel weights, calibrated on the training split
  onnx-int8-dynamic   ONNX dynamic int8 (weights only calibrated offline), for comparison
  openvino            OpenVINO IR fp32
  openvino-fp16       OpenVINO IR with fp16 weights
  openvino-int8       OpenVINO IR int8 through NNCF post-training quantisation (fast bias correction)
  tensorrt            TensorRT-ready ONNX; the fp32 engine is built on the device (edge-transfer build-engine)
  tensorrt-fp16       TensorRT-ready fp16 ONNX; fp16 engine built on the device
  tensorrt-int8       TensorRT-ready QDQ ONNX (symmetric int8, shared calibration); int8 engine built on the device

example:
  edge-transfer export runs/digits --format onnx,onnx-int8,openvino,openvino-int8 --out bundles/digits
"""


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(
        prog="edge-transfer",
        description="Transfer-learn a pretrained vision model on your images, export it as a validated bundle, run it on the device.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"edge-transfer {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = sub.add_parser(
        "train",
        help="adapt a pretrained backbone to a dataset; writes a run directory",
        description="Transfer-learn and save a run directory (model.safetensors + config.json with metrics).",
    )
    t.add_argument("--data", default="digits", help="an image folder (one sub-folder per class) or 'digits' (built in; default)")
    t.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
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
    t.add_argument("--out", required=True, help="run directory to create")
    t.add_argument("--image-size", type=int, help="model input size in pixels (default: the backbone's, 224 for efficientnet_lite0)")
    t.add_argument("--interpolation", choices=["bilinear", "bicubic", "nearest"], help="resize filter (default: the backbone's)")
    t.add_argument("--crop-pct", type=float, default=1.0, help="centre-crop share of the resized image (default 1.0: whole image)")
    t.add_argument("--epochs", type=int, help="epochs (finetune/partial, default 10) or L-BFGS iterations (linear-probe, default 300)")
    t.add_argument("--lr", type=float, help="head learning rate (default 1e-3); the backbone gets 0.1x")
    t.add_argument("--weight-decay", type=float, help="weight decay; linear-probe default: pick the L2 strength on val from a grid")
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
    t.add_argument("--seed", type=int, default=TrainConfig.seed, help=f"seed for splits, initialisation and shuffling (default {TrainConfig.seed})")
    t.add_argument("--skip-bad", action="store_true", help="leave unreadable images out with a warning instead of stopping")
    t.add_argument("--device", default=TrainConfig.device, choices=["auto", "cpu", "cuda"], help="training device (default: CUDA when present)")
    t.add_argument(
        "--mixed-precision",
        default=TrainConfig.mixed_precision,
        choices=["auto", "no", "bf16", "fp16"],
        help="auto (default): bf16 on GPUs that support it, else fp16 with loss scaling; none on the CPU",
    )
    t.add_argument("--workers", type=int, help="data-loading worker processes (default: 0 on the CPU, up to 8 per GPU)")
    t.add_argument("--feature-batch-size", type=int, help="linear-probe: batch for computing the feature cache (default 64 on the CPU, 256 on a GPU)")
    t.add_argument("--cache-dir", help="feature cache (default $EDGE_TRANSFER_CACHE or ~/.cache/edge-transfer)")
    t.add_argument(
        "--resume", action="store_true", help="finetune/partial: continue an interrupted run from OUT.checkpoint (written after every epoch)"
    )
    t.add_argument("--overwrite", action="store_true", help="replace an existing run directory (and drop its checkpoint)")
    t.add_argument("--json", action="store_true", help="print the result as JSON")
    t.add_argument("--quiet", action="store_true", help="no progress or per-epoch lines")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "export",
        help="export a run (or a pretrained backbone as it is) to validated bundles, one per format",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export to one bundle per format. Each is loaded through the device runtime and compared with torch on "
        "held-out data; a bundle whose accuracy drops more than --max-drop points (or, for fp32/fp16 and for "
        "unlabelled data, whose top-1 agreement is below --min-agreement) is not written.",
        epilog=FORMATS_HELP,
    )
    e.add_argument("run", nargs="?", help="training run directory (omit with --backbone)")
    e.add_argument("--backbone", help="export this backbone's source model as it is (with --strategy pretrained)")
    e.add_argument("--strategy", default="pretrained", help="with --backbone: only 'pretrained'")
    e.add_argument("--format", default="onnx", help="one format or a comma-separated list (default onnx; see below)")
    e.add_argument("--out", required=True, help="bundle directory to create; with several formats, one sub-directory per format")
    e.add_argument("--image-size", type=int, help="with --backbone: input size (default: the backbone's)")
    e.add_argument("--data", help="held-out data for validation (default: the run's own test split; digits for --backbone)")
    e.add_argument("--max-drop", type=float, default=1.0, help="largest accuracy drop vs torch fp32, in points (default 1.0)")
    e.add_argument(
        "--min-agreement", type=float, help="minimum top-1 agreement with torch (default 0.995 fp32, 0.99 fp16, 0.97 int8 on unlabelled data)"
    )
    q = e.add_argument_group("int8 quantisation")
    q.add_argument("--calibration-size", type=int, default=300, help="calibration images drawn (seeded) from the training split (default 300)")
    q.add_argument("--calibration-data", help="calibrate on this image folder (or 'digits') instead of the training split")
    q.add_argument(
        "--calibration-method",
        default="minmax",
        choices=["minmax", "entropy", "percentile"],
        help="onnx-int8 activation ranges (default minmax; percentile is slower, sometimes more accurate)",
    )
    q.add_argument(
        "--accuracy-aware",
        action="store_true",
        help="keep the most sensitive layers in float until the int8 model passes on the val split (NNCF accuracy control for OpenVINO)",
    )
    q.add_argument(
        "--target-cpu",
        default="portable",
        choices=["portable", "x86-avx2", "x86-vnni", "arm64"],
        help="the CPU the int8 bundles will run on, not this host: portable (default) and x86-avx2 use 7-bit "
        "weights that cannot saturate on CPUs without VNNI; x86-vnni and arm64 use full 8-bit weights, and "
        "a bundle made for them warns at load (and fails 'check') on an x86 CPU without VNNI",
    )
    q.add_argument("--per-tensor", action="store_true", help="onnx-int8: one scale per weight tensor instead of per channel (usually much worse)")
    r = e.add_argument_group("TensorRT engine settings (tensorrt formats; the engine is built on the device)")
    r.add_argument("--trt-max-batch", type=int, help="largest batch the engine accepts (default 16; --batch-size fixes it)")
    r.add_argument("--trt-opt-batch", type=int, help="batch the engine is tuned for (default 1)")
    r.add_argument("--trt-workspace", type=int, metavar="MIB", help="builder workspace limit in MiB (default 1024)")
    r.add_argument("--trt-dla-core", type=int, help="run on this DLA core (Jetson Xavier/Orin)")
    r.add_argument("--trt-no-gpu-fallback", action="store_true", help="with --trt-dla-core: fail instead of running unsupported layers on the GPU")
    r.add_argument("--trt-hardware-compatible", action="store_true", help="engine runs on any GPU of Ampere or newer (slower)")
    r.add_argument(
        "--trt-version-compatible", action="store_true", help="engine runs on this or a newer TensorRT (needs the device's lean runtime library)"
    )
    e.add_argument("--batch-size", type=int, help="fix the batch dimension to N (static shapes, needed for NPUs); default dynamic")
    e.add_argument(
        "--self-test-size",
        type=int,
        default=16,
        help="golden images (seeded draw from the held-out data) stored with torch reference logits for 'edge-transfer check' (default 16; 0: none)",
    )
    e.add_argument("--allow-failed-validation", action="store_true", help="write bundles even if validation fails (marked failed)")
    e.add_argument("--overwrite", action="store_true", help="replace existing bundles (atomically)")
    e.add_argument("--json", action="store_true", help="print every format's result as JSON")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_export)

    pr = sub.add_parser(
        "predict",
        help="classify images with a bundle (needs only runtimes + its backend)",
        description="Classify image files (.npy needs numpy only; other formats need Pillow).",
    )
    pr.add_argument("bundle")
    pr.add_argument("images", nargs="+", metavar="IMAGE")
    pr.add_argument("--top-k", type=int, default=5)
    pr.add_argument("--device", help="backend device (onnxruntime: cpu, cuda, tensorrt; openvino: cpu, gpu, npu, auto; default cpu)")
    pr.add_argument("--inference-precision", choices=PRECISION_CHOICES, help=PRECISION_HELP)
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_predict)

    c = sub.add_parser(
        "check",
        help="run a bundle's self-test on this device (torch-free): PASS/FAIL, exit 0/1",
        description="Run the bundle's golden images through its backend here and compare with the torch fp32 reference "
        "stored at export, within the tolerances its gate measured. Prints backend, device, the precision "
        "actually used, the CPU features that matter (VNNI, bf16, fp16), agreement and error, then PASS or "
        "FAIL; exits 1 with one 'error:' line on FAIL (or when the bundle has no self-test data).",
    )
    c.add_argument("bundle")
    c.add_argument("--device", help="backend device (as for predict; default cpu)")
    c.add_argument("--inference-precision", choices=PRECISION_CHOICES, help=PRECISION_HELP)
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(func=cmd_check)

    b = sub.add_parser(
        "bench",
        help="measure latency of one or more bundles on this device (needs only runtimes + a backend)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Latency the application sees: load and first call reported apart, warm-up until stable, then "
        "p50/p90/p95/p99, throughput and memory. The plain backend call (session.run / infer request) is "
        "timed on the same session in alternating blocks, and our overhead is reported against it.",
        epilog="examples:\n  edge-transfer bench bundles/digits/onnx bundles/digits/onnx-int8 --batch 1,8\n"
        "  edge-transfer bench bundles/digits/openvino-int8 --device AUTO --hint throughput --duration 10 --json bench.json\n"
        "  edge-transfer bench bundles/digits/* --mode end-to-end --data held_out/ --csv bench.csv --plot bench.png",
    )
    b.add_argument("bundles", nargs="+", metavar="BUNDLE", help="bundle directories; the first is the speed-up reference")
    b.add_argument("--batch", default="1", help="batch sizes, comma-separated (default 1)")
    b.add_argument(
        "--mode",
        default="model",
        choices=["model", "end-to-end"],
        help="model: the backend call on a ready uint8 tensor (default); end-to-end: decoded images in, labels out "
        "(resize, crop, softmax and top-k included)",
    )
    how_long = b.add_mutually_exclusive_group()
    how_long.add_argument("--iterations", type=int, default=200, help="timed calls per bundle and batch (default 200)")
    how_long.add_argument("--duration", type=float, help="measure for this many seconds instead of a fixed count")
    b.add_argument("--warmup", type=int, help="warm-up calls (default: until two blocks of 10 agree within 5%%)")
    b.add_argument("--device", help="onnxruntime: cpu, cuda, tensorrt; openvino: CPU, GPU, NPU, AUTO (default cpu)")
    b.add_argument("--threads", type=int, default=0, help="inference threads (default: the backend's own choice)")
    b.add_argument("--hint", choices=["latency", "throughput"], help="OpenVINO performance hint (default latency)")
    b.add_argument("--streams", type=int, help="OpenVINO inference streams (default: from the hint)")
    b.add_argument("--inference-precision", choices=PRECISION_CHOICES, help=PRECISION_HELP)
    b.add_argument(
        "--ignore-self-test",
        action="store_true",
        help="measure bundles whose self-test fails in this configuration (the failure is printed beside the numbers)",
    )
    b.add_argument("--images", nargs="+", metavar="IMAGE", help="end-to-end inputs (default: synthetic 480x640 images)")
    b.add_argument("--data", help="labelled image folder (one sub-folder per class): adds an accuracy column")
    b.add_argument("--json", metavar="FILE", help="write every statistic (ours and the plain call) and the machine as JSON")
    b.add_argument("--csv", metavar="FILE", help="write the comparison table as CSV")
    b.add_argument("--plot", metavar="FILE.png", help="latency distributions and accuracy vs latency (needs matplotlib)")
    b.add_argument("--json-stdout", action="store_true", help="print the rows as JSON on stdout instead of the table")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_bench)

    g = sub.add_parser(
        "build-engine",
        help="build (or reuse) this device's TensorRT engine for a TensorRT bundle",
        description="Build the TensorRT engine for this GPU from a bundle's TensorRT-ready ONNX and cache it (keyed by model hash, "
        "TensorRT version, compute capability, precision and profile); later loads reuse it. A corrupt or "
        "mismatched cache entry is rebuilt, never loaded. Needs TensorRT and cuda-python (JetPack on Jetson).",
    )
    g.add_argument("bundle")
    g.add_argument("--cache-dir", help="engine cache (default $EDGE_TRANSFER_CACHE/engines or ~/.cache/edge-transfer/engines)")
    g.add_argument("--data", help="labelled image folder: check the engine's accuracy on this device")
    g.add_argument("--out", help="also write a bundle carrying the built engine, for identical devices (same TensorRT and GPU)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --out bundle")
    g.add_argument("--json", action="store_true")
    g.add_argument("--quiet", action="store_true", help="no build progress")
    g.set_defaults(func=cmd_build_engine)

    i = sub.add_parser(
        "inspect", help="verify a bundle and show its manifest", description="Verify checksums and schema, then summarise the manifest."
    )
    i.add_argument("bundle")
    i.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    i.set_defaults(func=cmd_inspect)

    d = sub.add_parser(
        "demo",
        help="digits -> efficientnet_lite0 linear probe -> ONNX bundle -> validated predictions",
        description="The whole pipeline on built-in data, offline.",
    )
    d.add_argument("--out", default="demo-output", help="where the run and bundle go (default demo-output/)")
    d.add_argument("--strategy", default="linear-probe", choices=["linear-probe", "finetune", "partial"])
    d.add_argument("--image-size", type=int, default=128, help="input size (default 128)")
    d.add_argument("--epochs", type=int)
    d.add_argument("--json", action="store_true", help="machine-readable summary on stdout")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for stream in (sys.stdout, sys.stderr):  # labels and file names from a bundle may hold unprintable characters
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return args.func(args)
    except EdgeTransferError as exc:
        _err(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        _err("interrupted" + ("; continue a finetune/partial run with the same command plus --resume" if args.command == "train" else ""))
        return 130


if __name__ == "__main__":
    sys.exit(main())
