"""The `val` command: a bundle on a labelled image folder, on the device (runtimes.evaluate; no torch). Prints the
accuracy, per-class precision/recall, the confusion matrix and the most confident mistakes; `--plot` draws the
confusion matrix (matplotlib, checked before any work)."""

from __future__ import annotations

import argparse
from typing import Any

from runtimes.errors import InputError
from runtimes.open_set import check_min_score, resolve_min_score
from runtimes.outputs import OutputRule

from .output import MIN_SCORE_HELP, PRECISION_CHOICES, PRECISION_HELP, err, pct, precision_option, print_json, progress_bar, require_matplotlib
from .report_files import PLOT, save_figure
from .writes import writes

MAX_TEXT_CLASSES = 30  # a wider confusion matrix is left to --json / --plot


def add_val_parser(sub: Any) -> None:
    v = sub.add_parser(
        "val",
        help="accuracy, per-class precision/recall and a confusion matrix of a bundle on a labelled folder (no torch)",
        description="Evaluate a bundle on an image folder with one sub-folder per class (named like the bundle's labels), "
        "through the same path as predict: accuracy, per-class precision / recall / F1, the confusion matrix (rows: true "
        "class) and the mistakes the model was most sure of, with their paths.",
        epilog="example:\n  edge-transfer val bundles/pets/openvino-int8 --data held_out/ --skip-bad --plot cm.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    v.add_argument("bundle")
    v.add_argument("--data", required=True, help="labelled image folder (one sub-folder per class); text: class folders of .txt or a CSV/TSV/JSONL")
    v.add_argument("--text-column", default="text", help="text tables: the text's column, a name or 0-based position (default text)")
    v.add_argument("--label-column", default="label", help="text tables: the label's column (default label)")
    v.add_argument("--skip-bad", action="store_true", help="leave unreadable images out (listed) instead of stopping at the first")
    v.add_argument("--worst", type=int, default=10, help="how many of the most confident mistakes to list (default 10)")
    v.add_argument("--plot", metavar="FILE.png", **writes(OutputRule("file", PLOT)), help="draw the confusion matrix (needs matplotlib)")
    v.add_argument("--device", help="backend device (onnxruntime: cpu, cuda, tensorrt; openvino: cpu, gpu, npu, auto; default cpu)")
    v.add_argument("--inference-precision", choices=PRECISION_CHOICES, help=PRECISION_HELP)
    v.add_argument("--min-score", metavar="S", help=MIN_SCORE_HELP + "; val then reports coverage and the accuracy of the answers")
    v.add_argument("--json", action="store_true", help="print everything as JSON")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    v.set_defaults(func=cmd_val)


def cmd_val(args: argparse.Namespace) -> int:
    import runtimes
    from runtimes.evaluate import evaluate

    if args.plot:
        require_matplotlib("evaluated")
    if args.worst < 0:
        raise InputError(f"--worst must be >= 0, got {args.worst}")
    check_min_score(args.min_score)
    unit = "text" if runtimes.read_manifest(args.bundle).text is not None else "img"
    with progress_bar(f"val {args.bundle}", unit=unit, enabled=not args.quiet and not args.json) as progress:
        with runtimes.load(args.bundle, device=args.device, **precision_option(args)) as predictor:
            columns = {"text_column": args.text_column, "label_column": args.label_column}
            floor = resolve_min_score(args.min_score, predictor.calibrated_min_score, what=args.bundle)
            result = evaluate(
                predictor, args.data, skip_bad=args.skip_bad, worst=args.worst, progress=progress, text_columns=columns, min_score=floor
            )
    if args.plot:
        plot_confusion(result, args.plot)
    if args.json:
        print_json(result.to_dict())
        if seen_warning(result) is not None:
            err(f"warning: {seen_warning(result)}")
        return 0
    print(format_report(result))
    return 0


def seen_warning(result: Any) -> str | None:
    """Said when some of the images were the model's own training images: accuracy on those is not held-out accuracy."""
    seen = result.seen_in_training
    if not seen or not seen["seen"]:
        return None
    at_least = "at least " if seen["sampled"] else ""
    return (
        f"{at_least}{seen['seen']} of these {seen['of']} images were in the data the model was trained or tuned on (train/val "
        "split): accuracy on them is not held-out accuracy; evaluate on images the model never saw"
    )


def format_report(result: Any) -> str:
    """The text report: summary, per-class table, confusion matrix (up to MAX_TEXT_CLASSES classes), mistakes."""
    correct = sum(row[i] for i, row in enumerate(result.confusion))
    lines = [f"{result.bundle} on {result.data}: accuracy {pct(result.accuracy)} ({correct}/{result.count} {result.unit})"]
    if result.open_set is not None:
        lines.append(open_set_line(result.open_set))
    if result.validation_passed is False:
        lines.append("warning: this bundle FAILED its validation gate at export (written with --allow-failed-validation)")
    if seen_warning(result) is not None:
        lines.append(f"warning: {seen_warning(result)}")
    width = max(len(label) for label in result.labels)
    lines += ["", f"{'class':<{width}}  support  precision  recall  f1"]
    for row in result.per_class:
        lines.append(f"{row['label']:<{width}}  {row['support']:>7}  {pct(row['precision']):>9}  {pct(row['recall']):>6}  {pct(row['f1'])}")
    n = len(result.labels)
    if n <= MAX_TEXT_CLASSES:
        cell = max(3, max(len(str(v)) for row in result.confusion for v in row))
        names = [label[:cell] for label in result.labels]
        lines += ["", "confusion matrix (rows: true class, columns: predicted)", " " * width + "  " + " ".join(f"{c:>{cell}}" for c in names)]
        for label, row in zip(result.labels, result.confusion):
            lines.append(f"{label:<{width}}  " + " ".join(f"{v:>{cell}}" for v in row))
    else:
        lines += ["", f"confusion matrix: {n} classes, see --json or --plot"]
    if result.mistakes:
        lines += ["", "most confident mistakes:"]
        lines += [f"  {m['path']}: {m['true']} taken for {m['predicted']} ({pct(m['confidence'])})" for m in result.mistakes]
    if result.skipped:
        lines += ["", f"left out ({len(result.skipped)} unreadable):"] + [f"  {s['reason']}" for s in result.skipped]
    return "\n".join(lines)


def plot_confusion(result: Any, path: str) -> None:
    """The confusion matrix as a heat map, rows normalised to recall, with the counts written in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cm = np.asarray(result.confusion, dtype=float)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(result.labels)
    size = min(4 + 0.45 * n, 24)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ticks = range(n)
    turn = n > 6 and max(len(label) for label in result.labels) > 3
    ax.set_xticks(ticks, result.labels, rotation=45 if turn else 0, ha="right" if turn else "center", fontsize=8)
    ax.set_yticks(ticks, result.labels, fontsize=8)
    if n <= 40:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7, color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{result.bundle}\naccuracy {100 * result.accuracy:.2f}% on {result.count} images", fontsize=9)
    fig.tight_layout()
    try:
        save_figure(fig, path)
    finally:
        plt.close(fig)


def open_set_line(o: dict[str, Any]) -> str:
    """Coverage and accuracy together, in one line."""
    floor = f"at a minimum score of {pct(o['min_score'])}" if o["min_score"] is not None else "answering every image"
    line = f"{floor}: answered {pct(o['coverage'])} of the known images, {pct(o['answered_accuracy'])} of those right"
    line += f" ({pct(o['kept_and_right'])} of all kept and right)"
    if o["unknown"]:
        line += f"; {pct(o['unknown_rejected'])} of the {o['unknown']} unknown/ images answered unknown"
    return line
