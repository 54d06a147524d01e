"""Tables, CSV, JSON and plots for `edge-transfer bench` results (`runtimes.bench.BenchResult`). No torch;
matplotlib only for `--plot`, imported when asked for."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.bench import BenchResult

from .report_files import BENCH_JSON, WRITTEN_BY, bench_csv_kind, save_figure, write_report

STAGES = ("decode", "preprocess", "tokenize", "model", "postprocess", "other")  # end-to-end stages, timed apart ("other": the rest of the call)

COLUMNS = (
    "name",
    "bundle",
    "format",
    "precision",
    "runs_at",
    "backend",
    "device",
    "size_mb",
    "batch",
    "mode",
    "load_s",
    "first_ms",
    "p50_ms",
    "p99_ms",
    "mean_ms",
    "throughput",
    "speedup",
    "overhead_pct",
    "plain_p50_ms",
    "peak_rss_mib",
    "accuracy",
    "self_test",
    "gate",
    *(f"{stage}_ms" for stage in STAGES),
)


def short_names(paths: Sequence[str]) -> dict[str, str]:
    """Each bundle path's shortest tail (last 1, 2, ... parts) that no other bundle here shares."""
    parts = {p: Path(p).parts or (p,) for p in paths}
    names = {}
    for p, own in parts.items():
        for n in range(1, len(own) + 1):
            tail = "/".join(own[-n:])
            if all("/".join(other[-n:]) != tail for q, other in parts.items() if q != p):
                break
        names[p] = tail
    return names


def bundle_names(results: Sequence[BenchResult]) -> dict[str, str]:
    """The name each measured bundle goes by in the table, the plot and the recommendation."""
    return short_names(list(dict.fromkeys(r.bundle for r in results)))


def passed_gate(bundle: str) -> bool:
    """Whether the bundle passed its export gate (one written with --allow-failed-validation says it did not)."""
    from runtimes.bundle import read_manifest

    return bool((read_manifest(bundle).validation or {}).get("passed"))


def comparison_rows(results: Sequence[BenchResult]) -> list[dict[str, Any]]:
    """One row per (bundle, batch); `speedup` is the first bundle's p50 at the same batch over this one's."""
    first: dict[tuple[int, int | None], float] = {}
    for r in results:
        first.setdefault((r.batch, r.tokens), r.latency.p50)
    names = bundle_names(results)
    gates = {b: passed_gate(b) for b in names}
    rows = []
    for r in results:
        stages = r.stages_ms or {}
        rows.append(
            {
                "name": names[r.bundle],
                "bundle": r.bundle,
                "format": r.export_format or f"{r.backend}-{r.precision}",
                "precision": r.precision,
                "runs_at": r.execution.get("computes", r.execution.get("inference_precision")),  # what computes in int8 and what in float
                "backend": r.backend,
                "device": r.device + (f" ({','.join(r.execution['execution_devices'])})" if r.execution.get("execution_devices") else ""),
                "size_mb": round(r.size_bytes / 1e6, 2),
                "batch": f"{r.batch} static" if r.execution.get("loaded_batch") else r.batch,
                "tokens": r.tokens,
                "mode": r.mode,
                "load_s": round(r.load_s, 3),
                "first_ms": round(r.first_ms, 2),
                "p50_ms": round(r.latency.p50, 3),
                "p99_ms": round(r.latency.p99, 3),
                "mean_ms": round(r.latency.mean, 3),
                "throughput": round(r.throughput, 1),
                "unit": r.unit,
                "tokens_per_s": round(r.throughput * r.tokens) if r.tokens else None,
                "speedup": round(first[(r.batch, r.tokens)] / r.latency.p50, 2) if r.latency.p50 else None,
                "overhead_pct": None if r.overhead is None else round(100 * r.overhead, 2),
                "plain_p50_ms": None if r.plain is None else round(r.plain.p50, 3),
                "peak_rss_mib": round(r.peak_rss_mib, 1),
                "accuracy": None if r.accuracy is None else round(r.accuracy, 4),
                "self_test": r.self_test,
                "gate": "pass" if gates[r.bundle] else "FAIL",
                **{f"{k}_ms": round(stages[k], 3) if k in stages else None for k in STAGES},
            }
        )
    return rows


def recommendation(results: Sequence[BenchResult]) -> dict[str, Any]:
    """The fastest bundle, at the smallest batch measured, that passed its export gate (not written by
    `--allow-failed-validation`) and its self-test in this run: {"bundle", "format", "batch", "p50_ms", "line"}."""
    if not results:
        return {"bundle": None, "line": "recommended: nothing was measured"}
    batch = min(r.batch for r in results)
    names = bundle_names(results)
    eligible, left_out = [], []
    for r in results:
        if r.batch != batch:
            continue
        name = names[r.bundle]
        if not passed_gate(r.bundle):
            left_out.append(f"{name} (failed its export gate)")
        elif r.self_test != "pass":
            left_out.append(f"{name} (self-test {r.self_test or 'not run'})")
        else:
            eligible.append(r)
    skipped = f"; left out: {', '.join(left_out)}" if left_out else ""
    if not eligible:
        return {"bundle": None, "batch": batch, "line": f"recommended: none: no bundle passed both its export gate and its self-test here{skipped}"}
    best = min(eligible, key=lambda r: r.latency.p50)
    return {
        "bundle": best.bundle,
        "format": best.export_format,
        "batch": batch,
        "p50_ms": round(best.latency.p50, 3),
        "line": f"recommended: {best.bundle} ({best.export_format or best.precision}), the fastest bundle that passed its export gate "
        f"and its self-test on this device: p50 {best.latency.p50:.3f} ms at batch {batch}{skipped}",
    }


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The comparison table users read: what ran where, how big, how fast, how much we add."""
    cols = [
        ("name", "bundle"),
        ("format", "format"),
        ("precision", "prec"),
        ("runs_at", "runs at"),
        ("backend", "backend"),
        ("device", "device"),
        ("size_mb", "size MB"),
        ("batch", "batch"),
        *([("tokens", "tokens")] if any(r.get("tokens") for r in rows) else []),
        ("p50_ms", "p50 ms"),
        ("p99_ms", "p99 ms"),
        ("throughput", "texts/s" if all(r.get("unit") == "texts" for r in rows) and rows else "img/s"),
        *([("tokens_per_s", "tokens/s")] if any(r.get("tokens") for r in rows) else []),
        ("speedup", "speed-up"),
        ("overhead_pct", "overhead"),
    ]
    for stage in STAGES:  # end-to-end: where the time goes
        if any(r.get(f"{stage}_ms") is not None for r in rows):
            cols.append((f"{stage}_ms", f"{stage} ms"))
    if any(r.get("accuracy") is not None for r in rows):
        cols.append(("accuracy", "accuracy"))
    if any(r.get("self_test") is not None for r in rows):
        cols.append(("self_test", "self-test"))
    if any(r.get("gate") == "FAIL" for r in rows):  # a bundle written with --allow-failed-validation
        cols.append(("gate", "export gate"))

    def cell(key: str, value: Any) -> str:
        if value is None:
            return "-"
        if key == "speedup":
            return f"{value:.2f}x"
        if key == "overhead_pct":
            return f"{value:+.1f}%"
        if key == "accuracy":
            return f"{100 * value:.2f}%"
        return str(value)

    table = [[title for _, title in cols]] + [[cell(k, r.get(k)) for k, _ in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


BENCH_CSV = bench_csv_kind(COLUMNS)


def write_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """The comparison table as CSV, to `path` or standard output (`-`)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k) for k in COLUMNS})
    write_report(path, buf.getvalue(), BENCH_CSV, flag="--csv")


def write_json(
    results: Sequence[BenchResult],
    rows: Sequence[dict[str, Any]],
    path: str | os.PathLike[str],
    context: dict[str, Any],
    not_measured: Sequence[dict[str, Any]] = (),
) -> None:
    """Everything: the table rows, each result's full statistics (ours and the plain call), what could not be
    measured, and the machine."""
    doc = {
        "written_by": f"{WRITTEN_BY} bench",
        "machine": context,
        "rows": list(rows),
        "results": [r.to_dict() for r in results],
        "not_measured": list(not_measured),
    }
    write_report(path, json.dumps(doc, indent=2, default=str) + "\n", BENCH_JSON, flag="--json")


def plot(results: Sequence[BenchResult], path: str | os.PathLike[str]) -> None:
    """One latency panel per batch size (horizontal box plots, p1-p99 whiskers, each panel its own axis) and, when
    accuracy was measured, accuracy against p50 latency per image with one colour per bundle and a legend. Bundles
    are named by their shortest distinct path tail, as in the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    version = tuple(int(v) for v in matplotlib.__version__.split(".")[:2] if v.isdigit())
    sideways: dict[str, Any] = {"orientation": "horizontal"} if version >= (3, 10) else {"vert": False}
    names = bundle_names(results)
    palette = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    colour = {b: palette(i % palette.N) for i, b in enumerate(names)}
    batches = sorted({r.batch for r in results})
    with_acc = [r for r in results if r.accuracy is not None]
    panels = len(batches) + (1 if with_acc else 0)
    height = max(3.0, 0.45 * len(names) + 1.6)
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, height), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        rows = [r for r in results if r.batch == batch]
        box = ax.boxplot([r.samples_ms or [float("nan")] for r in rows], whis=(1, 99), showfliers=False, patch_artist=True, widths=0.6, **sideways)
        for patch, r in zip(box["boxes"], rows):
            patch.set_facecolor(colour[r.bundle])
            patch.set_alpha(0.6)
        ticks = [names[r.bundle] if names[r.bundle] == r.export_format else f"{names[r.bundle]} ({r.export_format or r.precision})" for r in rows]
        ax.set_yticks(range(1, len(rows) + 1), ticks, fontsize=8)
        ax.invert_yaxis()  # the table's order, top to bottom
        for line in box["medians"]:  # visible on any box colour
            line.set(color="black", linewidth=2)
        top = max((float(np.percentile(r.samples_ms, 99)) for r in rows if r.samples_ms), default=1.0)
        ax.set_xlim(0, 1.08 * top)  # from zero: a 0.1 ms spread is not drawn as a wide one
        ax.set_xlabel("ms per call (box: p25-p75, line: median, whiskers: p1-p99)")
        ax.set_title(f"batch {batch}: {rows[0].mode} latency")
        ax.grid(axis="x", alpha=0.3)
    if with_acc:
        ax2 = axes[0][-1]
        markers = "osD^v<>"
        for r in with_acc:
            ax2.scatter(
                r.latency.p50 / r.batch,
                100 * (r.accuracy or 0.0),  # with_acc holds results that have an accuracy
                color=colour[r.bundle],
                marker=markers[batches.index(r.batch) % len(markers)],
                s=60,
                label=f"{names[r.bundle]} b{r.batch}",
                edgecolors="black",
                linewidths=0.5,
            )
        xs = [r.latency.p50 / r.batch for r in with_acc]
        accs = [100 * (r.accuracy or 0.0) for r in with_acc]
        ax2.set_xlim(0, 1.15 * max(xs))
        ax2.set_ylim(max(0.0, min(accs) - max(2.0, 0.1 * (max(accs) - min(accs)))), 100.5)  # accuracy never above 100%
        ax2.set_xlabel("p50 latency per image (ms)")
        ax2.set_ylabel("top-1 accuracy (%)")
        ax2.set_title("accuracy vs latency")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=True)
    fig.tight_layout()
    try:
        save_figure(fig, path)
    finally:
        plt.close(fig)


def machine_context() -> dict[str, Any]:
    """What the numbers were measured on."""
    import platform

    info: dict[str, Any] = {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info
