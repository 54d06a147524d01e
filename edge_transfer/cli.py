"""The `edge-transfer` command line. Host commands (train, export, demo) import torch when they run;
device commands (predict, inspect) need only `runtimes` and one backend."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Sequence

from runtimes.errors import EdgeTransferError

EPILOG = """examples:
  edge-transfer demo
  edge-transfer train --data digits --strategy linear-probe --out runs/digits
  edge-transfer train --data my_photos/ --strategy finetune --epochs 5 --image-size 160 --out runs/photos
  edge-transfer export runs/digits --format onnx --out bundles/digits
  edge-transfer export --backbone efficientnet_lite0 --strategy pretrained --format onnx --out bundles/imagenet
  edge-transfer predict bundles/imagenet cat.jpg --top-k 3
  edge-transfer inspect bundles/digits --json
"""


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


# ------------------------------------------------------------------------------------------------ commands


def cmd_train(args: argparse.Namespace) -> int:
    from .api import train

    run = train(
        args.data, out=args.out, backbone=args.backbone, strategy=args.strategy, image_size=args.image_size,
        interpolation=args.interpolation, crop_pct=args.crop_pct, epochs=args.epochs, lr=args.lr,
        weight_decay=args.weight_decay, batch_size=args.batch_size, unfreeze_blocks=args.unfreeze_blocks,
        seed=args.seed, skip_bad=args.skip_bad, device=args.device, cache_dir=args.cache_dir,
        progress=not args.quiet and not args.json, overwrite=args.overwrite, log=_err if not args.quiet else (lambda m: None),
    )
    if args.json:
        _print_json({"run": str(run.path), "metrics": run.metrics, "seconds": run.seconds})
    else:
        m = run.metrics
        acc = ", ".join(f"{k.replace('_accuracy', '')} {_pct(v)}" for k, v in m.items() if k.endswith("_accuracy"))
        print(f"saved run {run.path} in {run.seconds:.1f}s" + (f": accuracy {acc}" if acc else ""))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .api import export

    if args.format != "onnx":
        raise EdgeTransferError(f"--format {args.format!r} is not available yet (available: onnx)")
    result = export(
        args.run, out=args.out, format=args.format, backbone=args.backbone, strategy=args.strategy,
        image_size=args.image_size, data=args.data, min_agreement=args.min_agreement,
        allow_failed_validation=args.allow_failed_validation, overwrite=args.overwrite,
        log=_err if not (args.quiet or args.json) else (lambda m: None),
    )
    v = result.validation
    if args.json:
        _print_json({"bundle": str(result.bundle.path), "bytes": result.size_bytes, "validation": v, "seconds": result.seconds})
    else:
        status = "passed" if v["passed"] else "FAILED (overridden)"
        print(
            f"wrote {result.bundle.path} ({result.size_bytes / 1e6:.1f} MB, onnx fp32); validation {status}: "
            f"agreement {_pct(v['top1_agreement'])}, max |diff| {v['max_abs_logit_diff']:.2g}, "
            f"accuracy torch {_pct(v['torch_accuracy'])} / bundle {_pct(v['artifact_accuracy'])}"
        )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import runtimes

    predictor = runtimes.load(args.bundle, device=args.device)
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
    print(f"bundle      {bundle.path}  (verified: {len(m.files)} file(s), {bundle.size_bytes / 1e6:.2f} MB)")
    print(f"model       {m.backend} / {m.format} / {m.precision}, created {m.created}")
    print(f"input       {m.inputs[0].name} {m.inputs[0].dtype} {list(m.inputs[0].shape)} {m.inputs[0].layout or ''}")
    print(f"output      {m.outputs[0].name} {m.outputs[0].dtype} {list(m.outputs[0].shape)}")
    p = m.preprocessing
    print(f"preprocess  {p.input_size[0]}x{p.input_size[1]} {p.interpolation}, crop {p.crop_pct}, mean {p.mean}, std {p.std}, in graph: {p.normalize_in_graph}")
    print(f"labels      {len(m.labels)}: {', '.join(m.labels[:5])}{' ...' if len(m.labels) > 5 else ''}")
    src = m.source
    print(f"source      {src.get('backbone', '?')} ({src.get('weights', '?')}), strategy {src.get('strategy', '?')}, licence {src.get('license', '?')}")
    if v:
        print(
            f"validation  {'passed' if v.get('passed') else 'FAILED'} on {v.get('split')} ({v.get('count')} images): "
            f"agreement {_pct(v.get('top1_agreement'))}, max |diff| {v.get('max_abs_logit_diff', float('nan')):.2g}, "
            f"accuracy torch {_pct(v.get('torch_accuracy'))} / bundle {_pct(v.get('artifact_accuracy'))}"
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .api import demo

    summary = demo(
        args.out, image_size=args.image_size, strategy=args.strategy, epochs=args.epochs,
        progress=not args.json, log=_err if not args.json else (lambda m: None),
    )
    if args.json:
        _print_json(summary)
        return 0
    m, v, t = summary["metrics"], summary["validation"], summary["timings_s"]
    print()
    print(f"edge-transfer demo: digits -> {summary['backbone']} ({summary['strategy']}, {summary['image_size'][0]} px) -> ONNX bundle")
    print(f"  test accuracy (torch)   {_pct(m.get('test_accuracy'))} on {m.get('test_count')} held-out images")
    print(f"  bundle accuracy (ORT)   {_pct(v['artifact_accuracy'])}; top-1 agreement {_pct(v['top1_agreement'])}; max |logit diff| {v['max_abs_logit_diff']:.2g}")
    print(f"  bundle                  {summary['bundle']} ({summary['bundle_bytes'] / 1e6:.1f} MB), runs on {summary['runtime']['backend']} {summary['runtime']['device']}")
    print("  predictions             " + ", ".join(f"{p['image']}: {p['predicted']} (true {p['true']}, {p['score']:.0%})" for p in summary["predictions"]))
    print(f"  timings                 train {t['train']:.1f}s, export+validate {t['export_and_validate']:.1f}s, load {t['load_bundle']:.2f}s, predict 5 {t['predict_5_images']:.3f}s")
    return 0


# ------------------------------------------------------------------------------------------------ parser


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

    t = sub.add_parser("train", help="adapt a pretrained backbone to a dataset; writes a run directory",
                       description="Transfer-learn and save a run directory (model.safetensors + config.json with metrics).")
    t.add_argument("--data", default="digits", help="an image folder (one sub-folder per class) or 'digits' (built in; default)")
    t.add_argument("--backbone", default="efficientnet_lite0",
                   help="efficientnet_lite0 (default, offline ImageNet weights), timm:<name>, torchvision:<name>, a run dir or a .safetensors file")
    t.add_argument("--strategy", default="linear-probe", choices=["pretrained", "linear-probe", "finetune", "partial"],
                   help="linear-probe: frozen backbone, cached features, new head (default); finetune: whole network; "
                        "partial: last --unfreeze-blocks blocks; pretrained: source model as it is")
    t.add_argument("--out", required=True, help="run directory to create")
    t.add_argument("--image-size", type=int, help="model input size in pixels (default: the backbone's, 224 for efficientnet_lite0)")
    t.add_argument("--interpolation", choices=["bilinear", "bicubic", "nearest"], help="resize filter (default: the backbone's)")
    t.add_argument("--crop-pct", type=float, default=1.0, help="centre-crop share of the resized image (default 1.0: whole image)")
    t.add_argument("--epochs", type=int, help="epochs (finetune/partial, default 10) or L-BFGS iterations (linear-probe, default 300)")
    t.add_argument("--lr", type=float, help="head learning rate (default 1e-3); the backbone gets 0.1x")
    t.add_argument("--weight-decay", type=float, help="weight decay; linear-probe default: pick the L2 strength on val from a grid")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--unfreeze-blocks", type=int, default=2, help="partial: how many of the last blocks to train (default 2)")
    t.add_argument("--seed", type=int, default=0, help="seed for splits, initialisation and shuffling (default 0)")
    t.add_argument("--skip-bad", action="store_true", help="leave unreadable images out with a warning instead of stopping")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="training device (default: CUDA when present)")
    t.add_argument("--cache-dir", help="feature cache (default $EDGE_TRANSFER_CACHE or ~/.cache/edge-transfer)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    t.add_argument("--json", action="store_true", help="print the result as JSON")
    t.add_argument("--quiet", action="store_true", help="no progress or per-epoch lines")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("export", help="export a run (or a pretrained backbone as it is) to a validated bundle",
                       description="Export to a bundle, validate it through the device runtime against torch on held-out data, "
                                   "and refuse to write it when top-1 agreement is below --min-agreement.")
    e.add_argument("run", nargs="?", help="training run directory (omit with --backbone)")
    e.add_argument("--backbone", help="export this backbone's source model as it is (with --strategy pretrained)")
    e.add_argument("--strategy", default="pretrained", help="with --backbone: only 'pretrained'")
    e.add_argument("--format", default="onnx", help="bundle format (available: onnx)")
    e.add_argument("--out", required=True, help="bundle directory to create")
    e.add_argument("--image-size", type=int, help="with --backbone: input size (default: the backbone's)")
    e.add_argument("--data", help="held-out data for validation (default: the run's own test split; digits for --backbone)")
    e.add_argument("--min-agreement", type=float, help="minimum top-1 agreement with torch (default 0.995 for fp32)")
    e.add_argument("--allow-failed-validation", action="store_true", help="write the bundle even if validation fails (marked failed)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing bundle (atomically)")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_export)

    pr = sub.add_parser("predict", help="classify images with a bundle (needs only runtimes + its backend)",
                        description="Classify image files (.npy needs numpy only; other formats need Pillow).")
    pr.add_argument("bundle")
    pr.add_argument("images", nargs="+", metavar="IMAGE")
    pr.add_argument("--top-k", type=int, default=5)
    pr.add_argument("--device", help="backend device (onnxruntime: cpu, cuda, tensorrt; default cpu)")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_predict)

    i = sub.add_parser("inspect", help="verify a bundle and show its manifest", description="Verify checksums and schema, then summarise the manifest.")
    i.add_argument("bundle")
    i.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    i.set_defaults(func=cmd_inspect)

    d = sub.add_parser("demo", help="digits -> efficientnet_lite0 linear probe -> ONNX bundle -> validated predictions",
                       description="The whole pipeline on built-in data, offline.")
    d.add_argument("--out", default="demo-output", help="where the run and bundle go (default demo-output/)")
    d.add_argument("--strategy", default="linear-probe", choices=["linear-probe", "finetune", "partial"])
    d.add_argument("--image-size", type=int, default=128, help="input size (default 128)")
    d.add_argument("--epochs", type=int)
    d.add_argument("--json", action="store_true", help="machine-readable summary on stdout")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return args.func(args)
    except EdgeTransferError as exc:
        _err(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
