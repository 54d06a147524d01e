"""The `bench` command: latency of one or more bundles on this device (runtimes.bench), with the table, CSV, JSON
and plot of runtimes.cli.bench_report. Needs only runtimes + a backend."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from runtimes.bench import MODES, BenchOptions
from runtimes.errors import InputError
from runtimes.options import MAX_BATCH
from runtimes.outputs import OutputRule

from .bench_report import BENCH_CSV
from .output import PRECISION_CHOICES, PRECISION_HELP, err, precision_option, print_json, progress_bar, require_matplotlib
from .report_files import BENCH_JSON, PLOT
from .writes import writes

REPORT_JSON = OutputRule("file", BENCH_JSON, stream=True)
REPORT_CSV = OutputRule("file", BENCH_CSV, stream=True)
PLOT_FILE = OutputRule("file", PLOT)


def add_bench_parser(sub: Any) -> None:
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
        "--static",
        action="store_true",
        help="load each bundle once per batch size, compiled for that size (static shapes: runtimes.load(..., batch_size=N)) "
        "instead of once with its dynamic batch",
    )
    b.add_argument("--tokens", help="text bundles: text lengths in tokens, comma-separated (default 16,64,256, up to the bundle's limit)")
    b.add_argument(
        "--mode",
        default=BenchOptions.mode,
        choices=MODES,
        help="model: the backend call on a ready uint8 tensor (default); end-to-end: images in, labels out, with decode "
        "(--images files), preprocess, model and postprocess timed apart",
    )
    how_long = b.add_mutually_exclusive_group()
    how_long.add_argument(
        "--iterations", type=int, default=BenchOptions.iterations, help=f"timed calls per bundle and batch (default {BenchOptions.iterations})"
    )
    how_long.add_argument("--duration", type=float, help="measure for this many seconds instead of a fixed count")
    b.add_argument("--warmup", type=int, help="warm-up calls (default: until two blocks of 10 agree within 5%%)")
    b.add_argument("--device", help="onnxruntime: cpu, cuda, tensorrt; openvino: CPU, GPU, NPU, AUTO (default cpu)")
    b.add_argument("--threads", type=int, help="inference threads, 1 or more (default: the backend's own choice)")
    b.add_argument("--hint", choices=["latency", "throughput"], help="OpenVINO performance hint (default latency)")
    b.add_argument("--streams", type=int, help="OpenVINO inference streams (default: from the hint)")
    b.add_argument("--inference-precision", choices=PRECISION_CHOICES, help=PRECISION_HELP)
    b.add_argument(
        "--ignore-self-test",
        action="store_true",
        help="measure bundles whose self-test fails in this configuration (the failure is printed beside the numbers)",
    )
    b.add_argument(
        "--images",
        nargs="+",
        metavar="IMAGE",
        help="image files or folders: end-to-end inputs, decoded in each call (default: synthetic 480x640 arrays)",
    )
    b.add_argument("--data", help="labelled image folder (one sub-folder per class): adds an accuracy column")
    b.add_argument("--skip-bad", action="store_true", help="with --data: leave unreadable images out instead of stopping")
    b.add_argument(
        "--json",
        metavar="FILE",
        **writes(REPORT_JSON),
        help="write every statistic (ours and the plain call) and the machine as JSON ('-': standard output)",
    )
    b.add_argument("--csv", metavar="FILE", **writes(REPORT_CSV), help="write the comparison table as CSV ('-': standard output)")
    b.add_argument("--plot", metavar="FILE.png", **writes(PLOT_FILE), help="latency distributions and accuracy vs latency (needs matplotlib)")
    b.add_argument("--json-stdout", action="store_true", help="print the rows as JSON on stdout instead of the table")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_bench)


def _int_list(spec: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not 1 <= v <= MAX_BATCH for v in values):
        raise InputError(f"{what} must be whole numbers from 1 to {MAX_BATCH} separated by commas, got {spec!r}")
    return values


def cmd_bench(args: argparse.Namespace) -> int:
    from runtimes.bench import BenchOptions, bench_bundle, labelled_accuracy
    from runtimes.options import options_from_namespace

    from .bench_report import comparison_rows, format_table, machine_context, plot, recommendation, write_csv, write_json

    streams = [flag for flag, value in (("--json", args.json), ("--csv", args.csv)) if value == "-"]
    if len(streams) > 1 or (streams and args.json_stdout):
        raise InputError(f"{', '.join(streams + (['--json-stdout'] if args.json_stdout else []))}: only one report can go to standard output")
    table_out = sys.stderr if streams else sys.stdout  # a report on standard output keeps it clean for a pipe
    batches = _int_list(args.batch, "--batch")
    tokens = _int_list(args.tokens, "--tokens") if args.tokens else None
    if args.plot:  # before any measurement, not after it
        require_matplotlib("measured")
    options: dict[str, Any] = {}
    if args.threads is not None:
        options["threads"] = args.threads
    if args.hint:
        options["hint"] = args.hint
    if args.streams:
        options["streams"] = args.streams
    options.update(precision_option(args))
    self_tests = _bench_self_tests(args.bundles, args.device, options, args.ignore_self_test)
    if self_tests is None:
        return 1
    images: list[Any] | None = None
    if args.images:
        from runtimes.preprocess import expand_image_paths, read_image

        paths = expand_image_paths(args.images)
        decoded = [read_image(path) for path in paths]  # an unreadable file is reported before any measurement
        images = list(paths) if args.mode == "end-to-end" else decoded  # end-to-end: decoding is timed in each call
    results = []
    not_measured: list[dict[str, Any]] = []
    interrupted = False
    for path in args.bundles:
        total = None if args.duration else args.iterations
        try:
            with progress_bar(f"bench {path}", unit="it", total=total, enabled=not args.quiet and not args.json_stdout) as progress:
                found = bench_bundle(
                    path,
                    batches=batches,
                    tokens=tokens,
                    device=args.device,
                    backend_options=options,
                    options=options_from_namespace(BenchOptions, args),
                    images=images,
                    progress=progress,
                    not_measured=not_measured,
                    static=args.static,
                )
        except KeyboardInterrupt:
            found, interrupted = [], True
        if args.data and found:
            import runtimes

            with runtimes.load(path, device=args.device, **options) as predictor:
                accuracy = labelled_accuracy(predictor, args.data, skip_bad=args.skip_bad)
            for r in found:
                r.accuracy = accuracy
        for r in found:
            r.self_test = self_tests[path]
        results.extend(found)
        if interrupted or any(r.interrupted for r in found):
            interrupted = True
            break
    rows = comparison_rows(results)
    several = len({r.bundle for r in results}) > 1
    recommended = recommendation(results) if several and not interrupted else None
    if args.json:
        write_json(results, rows, args.json, machine_context(), not_measured)
    if args.csv:
        write_csv(rows, args.csv)
    if args.plot and results:
        plot(results, args.plot)
    if not results and not_measured and not interrupted:
        raise InputError("nothing was measured: " + "; ".join(f"{m['bundle']} batch {m['batch']}: {m['reason']}" for m in not_measured))
    if args.json_stdout:
        print_json(
            {"machine": machine_context(), "rows": rows, "recommendation": recommended, "not_measured": not_measured, "interrupted": interrupted}
        )
    else:
        print(format_table(rows), file=table_out)
        if recommended is not None:
            print(recommended["line"], file=table_out)
        for r, row in zip(results, rows):
            plain = f"; plain backend call p50 {r.plain.p50:.3f} ms" if r.plain else ""
            print(
                f"{row['name']} batch {r.batch}{f', {r.tokens} tokens' if r.tokens else ''}: load {r.load_s:.2f} s, first call {r.first_ms:.1f} ms, "
                f"{r.warmup_iterations} warm-up calls, {r.latency.count} timed{plain}",
                file=sys.stderr,
            )
            if r.stages_ms:
                medians = {k: v for k, v in r.stages_ms.items() if not k.endswith("_mean")}
                means = {k.removesuffix("_mean"): v for k, v in r.stages_ms.items() if k.endswith("_mean")}
                parts = ", ".join(f"{k} {v:.2f}" for k, v in medians.items())
                print(f"  end-to-end p50 by stage (ms): {parts} ('other': the call's time outside the stages)", file=sys.stderr)
                total = " + ".join(f"{k} {v:.2f}" for k, v in means.items())
                print(f"  means add up: {total} = {sum(means.values()):.2f} ms, the mean call {r.latency.mean:.2f} ms", file=sys.stderr)
        for m in not_measured:
            print(f"not measured: {m['bundle']} batch {m['batch']}: {m['reason']}", file=sys.stderr)
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
                err(f"warning: {path}: {result.summary()} (measured anyway: --ignore-self-test)")
        elif result.status == "missing":
            err(f"note: {path}: {result.summary()}")
    if failed and not ignore:
        err("error: not measuring configurations whose self-test fails (--ignore-self-test measures them anyway): " + "; ".join(failed))
        return None
    return statuses
