"""The project's headline latency table, reproduced on this machine in one run.

EfficientNet-Lite0 (the offline ImageNet weights, 224 px, uint8 NHWC in, logits out) at batch 1 and 8 through:
torch eager fp32, ONNX Runtime fp32/fp16/int8 and OpenVINO fp32/fp16/int8. The "runs at" column is the precision
each runtime actually computes in, read back from it (OpenVINO is pinned to the precision the bundle was validated at;
on CPUs with native bf16 it would otherwise run an "fp32" IR in bf16). Every runtime is timed twice on the
same session, interleaved: its plain call (`session.run`, `InferRequest.infer`) and our `Predictor.run`. The table
gives p50 latency, throughput, our overhead against the plain call, and the speed-up against torch eager; then
OpenVINO's own `benchmark_app` on the same IR files (static shape), beside our harness with the bundle loaded for
that one batch size (`runtimes.load(..., batch_size=N)`) and with its dynamic batch; and, since benchmark_app runs in
its own process, its call pattern (input filled once, `infer()` timed) reproduced in this one and interleaved call by
call with the plain call and ours.

    python benchmarks/headline.py                 # about 4.5 minutes on 2 cores (7.5 with the first export)
    python benchmarks/headline.py --iterations 300 --work /tmp/lite0-bundles --json headline.json

Bundles are exported once into --work and reused by later runs (delete the folder to re-export).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FORMATS = ("onnx", "onnx-fp16", "onnx-int8", "openvino", "openvino-fp16", "openvino-int8")


def export_bundles(work: Path) -> dict[str, Path]:
    import edge_transfer as et
    from runtimes.bundle import BUNDLE
    from runtimes.fsutil import remove_ours

    missing = [f for f in FORMATS if not (work / f / "manifest.json").exists()]
    if missing:
        print(f"exporting efficientnet_lite0 to {', '.join(missing)} in {work} (once) ...", file=sys.stderr)
        # Calibration and validation use the built-in digits images, named explicitly (a pretrained int8 export needs
        # --calibration-data): the numbers here are latency, not accuracy, so failed gates are written and the
        # int8 ladder stops at post-training quantisation (the int8 speed does not depend on the rung).
        et.export(
            backbone="efficientnet_lite0",
            strategy="pretrained",
            out=work / "_new",
            format=",".join(missing),
            calibration_data="digits",
            calibration_size=64,
            fallback=False,
            allow_failed_validation=True,
            overwrite=True,
        )
        for f in missing:  # one format is written at out itself, several at out/<format>
            remove_ours(work / f, BUNDLE)  # an earlier, incomplete one; never a folder of anyone else's
            (work / "_new" / f if len(missing) > 1 else work / "_new").rename(work / f)
        remove_ours(work / "_new", BUNDLE)  # empty by now
    return {f: work / f for f in FORMATS}


def time_torch(batch: int, iterations: int) -> dict[str, float]:
    """torch eager fp32 on the same model and input (uint8 NHWC, normalisation inside the module)."""
    import torch

    from edge_transfer.model import ImageClassifier
    from edge_transfer.sources import create_backbone

    bb = create_backbone("efficientnet_lite0", pretrained=True)
    model = ImageClassifier(bb, bb.source_head, bb.labels).eval()
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8))
    samples = []
    with torch.inference_mode():
        for _ in range(max(5, iterations // 10)):
            model(x)
        for _ in range(iterations):
            t0 = time.perf_counter()
            model(x)
            samples.append(time.perf_counter() - t0)
    ms = np.asarray(samples) * 1000
    return {
        "p50": float(np.median(ms)),
        "p99": float(np.percentile(ms, 99)),
        "throughput": batch * len(ms) / (ms.sum() / 1000),
        "threads": torch.get_num_threads(),
    }


def benchmark_app(xml: Path, batch: int, seconds: int) -> float | None:
    """OpenVINO's benchmark_app median latency (ms) on the same IR, latency hint, or None if it is not installed."""
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    if not Path(exe).exists():
        return None
    cmd = [
        exe,
        "-m",
        str(xml),
        "-d",
        "CPU",
        "-hint",
        "latency",
        "-t",
        str(seconds),
        "-shape",
        f"images[{batch},224,224,3]",
        "-infer_precision",
        "f32",
    ]  # as our OpenVINO runs are pinned
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    match = re.search(r"Median:\s+([\d.]+)\s*ms", out.stdout)
    return float(match.group(1)) if match else None


def app_pattern(bundle: Path, batch: int, iterations: int) -> dict[str, float]:
    """benchmark_app's call pattern inside this process, beside ours, on one static load of `bundle`.

    benchmark_app fills its input tensors once and then times `infer()` alone. Here that call ("app pattern", on
    its own infer request of the same compiled model), the plain call with an input array each time, and our
    `Predictor.run` take turns call by call, in a random order each round. Returns each one's p50 (ms) and the
    median over rounds of ours / app pattern and plain / app pattern, measured side by side."""
    import random

    import runtimes

    x = np.random.default_rng(0).integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
    with runtimes.load(bundle, batch_size=batch) as p:
        request = p.compiled.create_infer_request()  # OpenVINO's; its input is filled once, as benchmark_app does
        request.infer(p.input.feeds(x))
        plain = p.native_call()
        calls: dict[str, Any] = {"app_pattern": request.infer, "plain": lambda: plain(x), "ours": lambda: p.run(x)}
        times: dict[str, list[float]] = {k: [] for k in calls}
        order = list(calls)
        for i in range(iterations + max(5, iterations // 10)):
            random.shuffle(order)
            for k in order:
                t0 = time.perf_counter()
                calls[k]()
                if i >= max(5, iterations // 10):  # the first rounds warm up
                    times[k].append(time.perf_counter() - t0)
    t = {k: np.asarray(v) * 1000 for k, v in times.items()}
    return {
        **{f"{k}_p50": float(np.median(v)) for k, v in t.items()},
        "ours_vs_app_pattern": float(np.median(t["ours"] / t["app_pattern"])),
        "plain_vs_app_pattern": float(np.median(t["plain"] / t["app_pattern"])),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(ROOT / "benchmarks" / ".bundles"), help="where the bundles are exported (reused)")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--iterations", type=int, default=200, help="timed calls per runtime and batch at batch 1 (fewer at larger batches)")
    p.add_argument("--json", help="also write the rows as JSON")
    p.add_argument("--no-benchmark-app", action="store_true")
    p.add_argument("--app-rounds", type=int, default=3, help="turns of benchmark_app / static / dynamic per OpenVINO format")
    args = p.parse_args()

    from runtimes.bench import bench_bundle
    from runtimes.cli.bench_report import machine_context

    batches = [int(b) for b in args.batches.split(",")]
    t_start = time.perf_counter()
    bundles = export_bundles(Path(args.work))
    rows: list[dict[str, Any]] = []
    torch_p50: dict[int, float] = {}
    for b in batches:
        n = max(20, args.iterations // b)
        t = time_torch(b, n)
        torch_p50[b] = t["p50"]
        rows.append(
            {
                "runtime": "torch eager",
                "precision": "fp32",
                "runs_at": "f32",
                "batch": b,
                "plain_p50": t["p50"],
                "ours_p50": None,
                "p99": t["p99"],
                "throughput": t["throughput"],
                "overhead_pct": None,
                "vs_torch": 1.0,
            }
        )
        print(f"torch eager batch {b}: p50 {t['p50']:.2f} ms ({t['threads']} threads)", file=sys.stderr)
    for fmt, path in bundles.items():
        for b in batches:
            (r,) = bench_bundle(path, batches=[b], iterations=max(20, args.iterations // b))
            # "runs at" is read back from the backend: OpenVINO is pinned to the validated f32, never a silent bf16
            rows.append(
                {
                    "runtime": r.backend,
                    "precision": r.precision,
                    "runs_at": r.execution.get("inference_precision") or "?",
                    "format": fmt,
                    "batch": b,
                    "plain_p50": r.plain.p50,
                    "ours_p50": r.latency.p50,
                    "p99": r.latency.p99,
                    "throughput": r.throughput,
                    "overhead_pct": 100 * r.overhead,
                    "vs_torch": torch_p50[b] / r.latency.p50,
                }
            )
            print(f"{fmt} batch {b}: ours p50 {r.latency.p50:.2f} ms, plain {r.plain.p50:.2f} ms", file=sys.stderr)
    app: dict[str, float | None] = {}
    static: dict[str, dict[str, float]] = {}  # the same IR loaded for one batch size (runtimes.load(..., batch_size=N))
    pattern: dict[str, dict[str, float]] = {}  # benchmark_app's call pattern in this process, interleaved with ours
    if not args.no_benchmark_app:
        # benchmark_app runs in its own process, so it cannot be interleaved call by call: the three (app, our static
        # load, our dynamic load) take turns for `--app-rounds` rounds, and each one's median over the rounds is kept
        for fmt in ("openvino", "openvino-fp16", "openvino-int8"):
            for b in batches:
                apps, st, dyn = [], [], []
                for _ in range(args.app_rounds):
                    apps.append(benchmark_app(bundles[fmt] / "model.xml", b, seconds=4))
                    (r,) = bench_bundle(bundles[fmt], batches=[b], iterations=max(20, args.iterations // b), static=True)
                    st.append(r.latency.p50)
                    (r,) = bench_bundle(bundles[fmt], batches=[b], iterations=max(20, args.iterations // b))
                    dyn.append(r.latency.p50)
                found = [a for a in apps if a is not None]
                app[f"{fmt}@{b}"] = float(np.median(found)) if found else None
                static[f"{fmt}@{b}"] = {"ours_p50": float(np.median(st)), "dynamic_p50": float(np.median(dyn))}
                pattern[f"{fmt}@{b}"] = app_pattern(bundles[fmt], b, max(100, 2 * args.iterations // b))

    machine = machine_context()
    print(f"\nEfficientNet-Lite0, 224 px, {machine.get('cpu', machine['machine'])}, {machine['cpus']} CPUs; p50 latency per call in ms")
    header = (
        f"{'runtime':<12} {'precision':<9} {'runs at':<8} {'batch':>5} {'plain p50':>10} {'ours p50':>9} {'overhead':>9} "
        f"{'p99':>8} {'img/s':>8} {'vs torch':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        ours = "-" if r["ours_p50"] is None else f"{r['ours_p50']:.2f}"
        over = "-" if r["overhead_pct"] is None else f"{r['overhead_pct']:+.1f}%"
        print(
            f"{r['runtime']:<12} {r['precision']:<9} {r['runs_at']:<8} {r['batch']:>5} {r['plain_p50']:>10.2f} {ours:>9} {over:>9} "
            f"{r['p99']:>8.2f} {r['throughput']:>8.1f} {r['vs_torch']:>8.2f}x"
        )
    if app:
        print(
            f"\nOpenVINO benchmark_app (latency hint, random input, static shape, same IR), median ms, against our p50 with the "
            f"bundle loaded static (runtimes.load(..., batch_size=N)) and dynamic; medians of {args.app_rounds} alternating rounds:"
        )
        for key, median in app.items():
            fmt, b = key.split("@")
            st = static[key]
            if median is None:
                shown = "benchmark_app not available"
            else:
                shown = (
                    f"app {median:.2f} | ours, static {st['ours_p50']:.2f} ({st['ours_p50'] / median:.2f}x app) | "
                    f"ours, dynamic {st['dynamic_p50']:.2f} ({st['dynamic_p50'] / median:.2f}x app)"
                )
            print(f"  {fmt:<14} batch {b}: {shown}")
        print(
            "\nThe same static load, in this process, call by call in a random order: benchmark_app's pattern (input filled "
            "once, `infer()` timed), the plain call given the input each time, and ours; p50 ms and the median ratio of "
            "side-by-side calls:"
        )
        for key, r in pattern.items():
            fmt, b = key.split("@")
            print(
                f"  {fmt:<14} batch {b}: app pattern {r['app_pattern_p50']:.2f} | plain {r['plain_p50']:.2f} "
                f"({r['plain_vs_app_pattern']:.3f}x) | ours {r['ours_p50']:.2f} ({r['ours_vs_app_pattern']:.3f}x)"
            )
    print(f"\n(total {time.perf_counter() - t_start:.0f} s)")
    if args.json:
        doc = {"machine": machine, "rows": rows, "benchmark_app": app, "static": static, "app_pattern": pattern}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
