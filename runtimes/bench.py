"""Latency benchmark of a bundle on the device it runs on: numpy + one backend, never torch.

What it measures, per bundle and batch size:
- load time (manifest + checksums + session/compile) and the first inference, reported apart from the rest;
- warm-up until the latency is stable (or a fixed count), then a fixed number of iterations or a duration;
- min, mean, std, p50, p90, p95, p99, max latency, throughput, peak resident memory, bundle size;
- in the same run, on the same session, the plain backend call (ONNX Runtime `session.run`, OpenVINO
  `InferRequest.infer`) paired call by call with ours in ABBA order, so our overhead is measured, not assumed,
  neither side always runs first, and drift during the run cancels out of the ratio.

Two modes: `model` times `Predictor.run` on a ready uint8 batch; `end-to-end` times what `Predictor.predict` does,
labels out, on images at their original size: decode (when given file paths), preprocess (resize, crop), model and
postprocess (softmax, top-k), each stage timed apart (`stages_ms`, medians).
Ctrl-C stops the measurement; what was measured so far is returned, marked `interrupted`.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .options import check_bounds, replace_options

MODES = ("model", "end-to-end")
TEXT_LENGTHS = (16, 64, 256)  # a text bundle's default sweep, in tokens
BLOCK = 10  # pairs of calls between progress updates and duration checks
WARMUP_TOLERANCE = 0.05  # warm-up ends when two consecutive blocks' medians differ by less than 5%
WARMUP_MAX_SECONDS = 20.0


@dataclass
class LatencyStats:
    """Latency statistics in milliseconds over `count` timed calls."""

    count: int
    min: float
    mean: float
    std: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> LatencyStats:
        ms = np.asarray(seconds, dtype=np.float64) * 1000.0
        if ms.size == 0:
            return cls(0, *([float("nan")] * 8))
        p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
        return cls(int(ms.size), float(ms.min()), float(ms.mean()), float(ms.std()), float(p50), float(p90), float(p95), float(p99), float(ms.max()))


@dataclass
class BenchResult:
    """One bundle at one batch size. Times in ms unless named `_s`; memory in MiB."""

    bundle: str
    export_format: str | None
    precision: str
    backend: str
    device: str
    execution: dict[str, Any]
    size_bytes: int
    batch: int
    mode: str
    threads: int | None  # None: the backend chose
    load_s: float
    first_ms: float
    warmup_iterations: int
    latency: LatencyStats
    plain: LatencyStats | None
    overhead: float | None  # ours / plain - 1: the median over side-by-side pairs of calls (model mode only)
    throughput: float  # images per second over the timed calls
    peak_rss_mib: float
    interrupted: bool = False
    accuracy: float | None = None
    self_test: str | None = None  # "pass", "fail" (reported only when the caller overrode the refusal) or "missing"
    stages_ms: dict[str, float] | None = None  # end-to-end only: median ms per stage (decode, preprocess, model, postprocess, other), and means
    tokens: int | None = None  # a text bundle: each text's length in tokens (the model's cost grows with it)
    unit: str = "images"  # what `throughput` counts per second: images or texts
    samples_ms: list[float] = field(default_factory=list, repr=False)

    def to_dict(self, *, samples: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not samples:
            d.pop("samples_ms")
        return d


def _rss_mib() -> float:
    """Resident memory of this process now (Linux /proc), or its peak where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource  # POSIX only: imported where /proc is missing (macOS)

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if platform.system() == "Darwin" else peak / 1024


def _timed(call: Callable[[], Any], n: int, out: list[float]) -> None:
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        call()
        out.append(clock() - t0)


def _paired(ours: Callable[[], Any], plain: Callable[[], Any], n: int, a: list[float], b: list[float], ratios: list[float]) -> None:
    """`n` side-by-side pairs of calls in ABBA order (neither side always runs first); records each pair's ratio."""
    clock = time.perf_counter
    for i in range(n):
        first, second = (ours, plain) if i % 2 == 0 else (plain, ours)
        t0 = clock()
        first()
        t1 = clock()
        second()
        t2 = clock()
        t_ours, t_plain = (t1 - t0, t2 - t1) if i % 2 == 0 else (t2 - t1, t1 - t0)
        a.append(t_ours)
        b.append(t_plain)
        ratios.append(t_ours / t_plain)


@dataclass(frozen=True)
class BenchOptions:
    """What and how long to measure; each field's default is the one default (`edge-transfer bench` builds its flags
    from it). iterations / duration: how long to measure (`duration` in seconds wins if given). warmup: a fixed
    number of warm-up calls, or None to warm up until two blocks of 10 agree within 5%."""

    mode: str = MODES[0]
    iterations: int = 200
    duration: float | None = None
    warmup: int | None = None

    def checked(self) -> BenchOptions:
        if self.mode not in MODES:
            raise InputError(f"bench mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        check_bounds(vars(self))
        if self.iterations < 1:
            raise InputError(f"iterations must be >= 1, got {self.iterations}")
        if self.duration is not None and self.duration <= 0:
            raise InputError(f"duration must be > 0 seconds, got {self.duration}")
        if self.warmup is not None and self.warmup < 0:
            raise InputError(f"warmup must be >= 0 calls, got {self.warmup}")
        return self


def bench_predictor(
    predictor: Any,
    *,
    batch: int = 1,
    options: BenchOptions | None = None,
    images: Sequence[Any] | None = None,
    tokens: int | None = None,
    load_s: float = 0.0,
    threads: int | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    **overrides: Any,
) -> BenchResult:
    """Benchmark a loaded predictor at one batch size (see the module docstring).

    options: `BenchOptions` (mode, iterations, duration, warmup); keyword arguments override single fields.
    images: end-to-end inputs: decoded RGB arrays of any size, or image file paths (then decoding is timed too);
        default: synthetic 480x640 arrays; for a text bundle, texts (default: made-up texts of `tokens` tokens, 64
        unless given; tokenising is the end-to-end `tokenize` stage).
    progress: called as progress(done, total) during the timed calls (total is None for a duration).
    """
    opts = replace_options(options or BenchOptions(), overrides, what="bench").checked()
    mode, duration, warmup = opts.mode, opts.duration, opts.warmup
    iterations = None if duration is not None else opts.iterations
    if batch < 1:
        raise InputError(f"batch size must be >= 1, got {batch}")
    if predictor.max_batch is not None and batch != predictor.max_batch:
        raise InputError(f"{predictor.bundle.path}: this bundle has a fixed batch of {predictor.max_batch}; cannot bench batch {batch}")

    if images is None:
        images = predictor.input.synthetic(min(batch, 8), tokens=tokens)
    elif tokens is not None:
        raise InputError("tokens= makes the texts; pass texts or tokens, not both")
    sources = [images[i % len(images)] for i in range(batch)]
    files = bool(sources) and isinstance(sources[0], (str, Path)) and predictor.modality == "image"  # paths to decode (texts are str too)
    ready = predictor.prepare(sources) if len(sources) else None
    plain_call = predictor.native_call()
    stages: dict[str, list[float]] = {"decode": [], "preprocess": [], "model": [], "postprocess": []}
    if mode == "model":
        ours: Callable[[], Any] = lambda: predictor.run(ready)
    else:
        ours = lambda: _staged_predict(predictor, sources, files, stages)
    plain: Callable[[], Any] = lambda: plain_call(ready)  # end-to-end: the model call alone, to show what the rest costs
    rss = _rss_mib()

    t0 = time.perf_counter()
    ours()
    first_ms = (time.perf_counter() - t0) * 1000.0
    rss = max(rss, _rss_mib())

    samples: list[float] = []
    plain_samples: list[float] = []
    ratios: list[float] = []  # per side-by-side pair of calls: ours / plain
    warm = 0
    interrupted = False
    try:
        warm = _warm_up(ours, plain, warmup)
        start = time.perf_counter()
        count = iterations or 0  # used only when no duration is given, and then set
        total_blocks = None if duration is not None else -(-count // BLOCK)
        done = 0
        while True:
            if duration is not None and time.perf_counter() - start >= duration:
                break
            if duration is None and done >= count:
                break
            n = BLOCK if duration is not None else min(BLOCK, count - done)
            _paired(ours, plain, n, samples, plain_samples, ratios)
            done += n
            rss = max(rss, _rss_mib())
            if progress is not None:
                progress(done, None if total_blocks is None else iterations)
    except KeyboardInterrupt:
        interrupted = True

    stats = LatencyStats.of(samples)
    plain_stats = LatencyStats.of(plain_samples) if plain_samples else None
    overhead = None
    if mode == "model" and ratios:
        # The median of side-by-side ratios: machine drift over the run (frequency, other processes) hits both
        # calls of a pair alike, so it cancels instead of showing up as "overhead".
        overhead = float(np.median(ratios)) - 1.0
    throughput = batch * len(samples) / sum(samples) if samples else float("nan")
    describe = predictor.describe()
    execution = {
        k: describe[k]
        for k in ("providers", "execution_devices", "hint", "streams", "inference_precision", "computes", "loaded_batch", "onnxruntime", "openvino")
        if k in describe
    }
    return BenchResult(
        bundle=str(predictor.bundle.path),
        export_format=predictor.manifest.export_format,
        precision=predictor.precision,
        backend=predictor.backend_name,
        device=predictor.device,
        execution=execution,
        size_bytes=predictor.bundle.size_bytes,
        batch=batch,
        mode=mode,
        threads=threads,
        load_s=load_s,
        first_ms=first_ms,
        warmup_iterations=warm,
        latency=stats,
        plain=plain_stats,
        overhead=overhead,
        throughput=throughput,
        peak_rss_mib=rss,
        interrupted=interrupted,
        stages_ms=_stage_medians(stages, samples, files, predictor.input.unit) if mode == "end-to-end" and samples else None,
        samples_ms=[s * 1000.0 for s in samples],
        tokens=int(ready.input_ids.shape[1]) if predictor.modality == "text" and ready is not None else None,
        unit=predictor.input.unit,
    )


def _staged_predict(predictor: Any, sources: Sequence[Any], files: bool, stages: dict[str, list[float]]) -> Any:
    """`predict(sources, top_k=5)` (an embedding bundle: `embed(sources)`), one stage at a time, appending each
    stage's seconds to `stages`."""
    from .predictor import unit_rows
    from .preprocess import read_image

    t0 = time.perf_counter()
    cfg = predictor.manifest.preprocessing
    decoded = [read_image(str(p), cfg) for p in sources] if files else sources
    t1 = time.perf_counter()
    batch = predictor.prepare(decoded)
    t2 = time.perf_counter()
    logits = predictor.run_chunked(batch)
    t3 = time.perf_counter()
    out = unit_rows(logits, str(predictor.bundle.path)) if predictor.is_embedding else predictor.classify(logits, 5)
    t4 = time.perf_counter()
    for key, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
        stages[key].append(seconds)
    return out


def _stage_medians(stages: dict[str, list[float]], samples: list[float], files: bool, unit: str = "images") -> dict[str, float]:
    """Median ms per stage over the timed calls (the last len(samples); warm-up calls come first), and `other`: per
    call, the call's time less its stages' (Python calls between the stages, the timer itself), so nothing of the
    call goes unaccounted. Medians of parts need not add up to the median whole on a noisy machine; `mean_ms` of each
    stage (same keys, `*_mean`) does add up to the mean call."""
    timed = len(samples)
    per_call = {key: np.asarray(v[-timed:]) for key, v in stages.items() if v and (files or key != "decode")}
    other = np.asarray(samples) - sum(per_call.values())
    out = {key: float(np.median(v)) * 1000.0 for key, v in per_call.items()}
    out["other"] = float(np.median(other)) * 1000.0
    out.update({f"{key}_mean": float(np.mean(v)) * 1000.0 for key, v in {**per_call, "other": other}.items()})
    if unit == "texts":  # a text's preprocessing is its tokenisation
        out = {k.replace("preprocess", "tokenize"): v for k, v in out.items()}
    return out


def _warm_up(ours: Callable[[], Any], plain: Callable[[], Any] | None, count: int | None) -> int:
    """Run both calls until latency is stable (or `count` times each); returns the warm-up calls made of ours."""
    if count is not None:
        for _ in range(count):
            ours()
            if plain is not None:
                plain()
        return count
    start, made, previous = time.perf_counter(), 0, None
    while True:
        block: list[float] = []
        _timed(ours, BLOCK, block)
        if plain is not None:
            _timed(plain, BLOCK, [])
        made += BLOCK
        median = float(np.median(block))
        if previous is not None and abs(median - previous) <= WARMUP_TOLERANCE * previous:
            return made
        if time.perf_counter() - start > WARMUP_MAX_SECONDS:
            return made
        previous = median


def bench_bundle(
    bundle_dir: str | os.PathLike[str],
    *,
    batches: Sequence[int] = (1,),
    tokens: Sequence[int] | None = None,
    device: str | None = None,
    backend_options: dict[str, Any] | None = None,
    not_measured: list[dict[str, Any]] | None = None,
    static: bool = False,
    **options: Any,
) -> list[BenchResult]:
    """Load a bundle (timed) and benchmark it at each batch size (a text bundle: at each text length of `tokens` too,
    default `TEXT_LENGTHS` up to its token limit); `options` (a `BenchOptions`), keyword overrides, `images` and
    `progress` as for `bench_predictor`. `static`: load it once per batch size, compiled for that size
    (`runtimes.load(..., batch_size=N)`), instead of once with its dynamic batch.

    A batch size the bundle cannot run (it was exported with a fixed batch) is left out, not an error: with
    `not_measured` given, a record {bundle, batch, reason} is appended to it for each one.
    """
    from . import load

    backend_options = dict(backend_options or {})
    if static:
        results: list[BenchResult] = []
        for b in batches:
            compiled = {**backend_options, "batch_size": b}
            one = bench_bundle(bundle_dir, batches=(b,), tokens=tokens, device=device, backend_options=compiled, **options)
            results += one
            if any(r.interrupted for r in one):
                break
        return results
    t0 = time.perf_counter()
    predictor = load(bundle_dir, device=device, **backend_options)
    load_s = time.perf_counter() - t0
    try:
        results = []
        lengths: list[int | None] = [None]
        if predictor.modality == "text" and options.get("images") is None:
            limit = predictor.manifest.text.max_tokens if predictor.manifest.text is not None else 0
            lengths = list(tokens or [t for t in TEXT_LENGTHS if t <= limit])
        elif tokens:
            raise InputError(f"{bundle_dir} is an {predictor.modality} bundle: --tokens is for text bundles")
        for b, length in [(b, t) for t in lengths for b in batches]:
            if predictor.max_batch is not None and b != predictor.max_batch:
                if not_measured is not None:
                    reason = f"fixed batch of {predictor.max_batch} (exported with --batch-size {predictor.max_batch})"
                    not_measured.append({"bundle": str(bundle_dir), "batch": b, "reason": reason})
                continue
            result = bench_predictor(predictor, batch=b, tokens=length, load_s=load_s, threads=backend_options.get("threads"), **options)
            results.append(result)
            if result.interrupted:
                break
        return results
    finally:
        predictor.close()


def labelled_accuracy(predictor: Any, folder: str | os.PathLike[str], *, skip_bad: bool = False) -> float:
    """Top-1 accuracy on an image folder (one sub-folder per class, named like the bundle's labels); `skip_bad`
    leaves unreadable images out. `runtimes.evaluate` has the per-class detail."""
    from .evaluate import evaluate

    return evaluate(predictor, folder, skip_bad=skip_bad, worst=0).accuracy
