"""The `probe-layers` command: which layer of the backbone to train a linear probe on (edge_transfer.layer_probe)."""

from __future__ import annotations

import argparse
from typing import Any

from runtimes.cli.output import pct, print_json
from runtimes.cli.writes import writes
from runtimes.errors import InputError
from runtimes.outputs import CACHE, OutputRule

from .config import TrainConfig


def add_probe_layers_parser(sub: Any) -> None:
    p = sub.add_parser(
        "probe-layers",
        help="fit a linear probe on every layer of the backbone: accuracy, feature size and latency of the cut network",
        description="Fit a linear probe (the L2 sweep of train --strategy linear-probe) on the pooled output of every block of "
        "the backbone and on its final features, split as train splits the data. For each layer: the feature size, val and "
        "test accuracy, and the cut network (uint8 image in, logits out, everything after the layer removed) exported to "
        "ONNX and timed with ONNX Runtime at batch 1. Recommends the best val accuracy per millisecond among the layers "
        "within 1 pt of the best; train it with train --features LAYER.",
        epilog="examples:\n  edge-transfer probe-layers --data digits --image-size 64\n"
        "  edge-transfer probe-layers --data photos/ --layers blocks.3,blocks.5,final --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, help="an image folder (one sub-folder per class), or 'digits'")
    p.add_argument("--backbone", default=TrainConfig.backbone, help="as for train (default efficientnet_lite0)")
    p.add_argument("--image-size", type=int, help="model input size in pixels (default: the backbone's)")
    p.add_argument("--layers", help="comma-separated layers to probe, as train --features takes them (default: all)")
    p.add_argument("--no-latency", action="store_true", help="skip the export and timing of each cut network")
    p.add_argument("--seed", type=int, default=TrainConfig.seed, help="split seed (default 0, as train)")
    p.add_argument("--skip-bad", action="store_true", help="leave unreadable images out instead of stopping")
    p.add_argument("--cache-dir", **writes(OutputRule("cache", CACHE)), help="feature cache (default ~/.cache/edge-transfer or $EDGE_TRANSFER_CACHE)")
    p.add_argument("--device", default="auto", help="where features are computed: auto, cpu, cuda")
    p.add_argument("--json", action="store_true", help="print the rows and the recommendation as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress")
    p.set_defaults(func=cmd_probe_layers)


def cmd_probe_layers(args: argparse.Namespace) -> int:
    from .layer_probe import probe_layers, recommend

    if args.image_size is not None and args.image_size < 8:
        raise InputError(f"--image-size must be at least 8 pixels, got {args.image_size}")
    rows, facts = probe_layers(
        args.data,
        layers=args.layers,
        time_layers=not args.no_latency,
        backbone=args.backbone,
        image_size=args.image_size,
        seed=args.seed,
        skip_bad=args.skip_bad,
        cache_dir=args.cache_dir,
        device=args.device,
        progress=not args.quiet and not args.json,
    )
    best, tied = recommend(rows, facts["split"]["val"])
    if args.json:
        print_json({**facts, "layers": [r.to_dict() for r in rows], "recommended": best.layer, "tied": [r.layer for r in tied]})
        return 0
    print(format_rows(rows, facts))
    print(recommendation_line(rows, best, tied, facts["split"]["val"]))
    return 0


def format_rows(rows: list[Any], facts: dict[str, Any]) -> str:
    """One line per layer: dim, val/test accuracy, the cut network's latency, speed-up and size against `final`."""
    final = next((r for r in rows if r.layer == "final"), None)
    head = ["layer", "dim", "val acc", "test acc", "ms (b1)", "vs final", "ONNX MB", "params", "val acc/ms"]
    lines = []
    for r in rows:
        speed = f"{final.ms / r.ms:.2f}x" if final is not None and final.ms and r.ms else "-"
        lines.append(
            [
                r.layer,
                str(r.dim),
                pct(r.val_accuracy),
                pct(r.test_accuracy),
                f"{r.ms:.2f}" if r.ms is not None else "-",
                speed,
                f"{r.onnx_mb:.2f}" if r.onnx_mb is not None else "-",
                f"{r.parameters / 1e6:.2f}M",
                f"{r.val_accuracy / r.ms:.3f}" if r.ms else "-",
            ]
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    out = [
        f"{facts['data']}: {facts['images']} images, {facts['classes']} classes (train {facts['split']['train']} / val "
        f"{facts['split']['val']} / test {facts['split']['test']}); {facts['backbone']} at {facts['input_size'][0]}x"
        f"{facts['input_size'][1]}; {facts['seconds']:.0f} s",
        "  ".join(h.ljust(w) for h, w in zip(head, widths)),
        "  ".join("-" * w for w in widths),
    ]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


def recommendation_line(rows: list[Any], best: Any, tied: list[Any], val_count: int) -> str:
    top = max(rows, key=lambda r: r.val_accuracy)
    cost = f", {best.ms:.2f} ms" if best.ms is not None else ""
    line = (
        f"recommended: --features {best.layer} (val {pct(best.val_accuracy)}{cost}): the best val accuracy per ms among the "
        f"layers tied with the best val accuracy ({top.layer}, {pct(top.val_accuracy)})"
    )
    if len(tied) > 1:
        line += (
            f"\n{len(tied)} of {len(rows)} layers ({', '.join(r.layer for r in tied)}) are tied within what {val_count} val "
            "images can tell, so speed decided; their test accuracy is in the table, and more images (--val-fraction, "
            "more data) would tell them apart"
        )
    return line
