"""`runtimes.bench` and `edge-transfer bench`: statistics, the plain-call comparison, Ctrl-C, the files it writes,
and the device-only run with torch blocked. Real ONNX Runtime and OpenVINO sessions on real bundles; speed itself
is never asserted here (that lives in benchmarks/)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import runtimes
from runtimes.bench import LatencyStats, bench_bundle, bench_predictor
from runtimes.errors import InputError

from conftest import run_cli


def test_latency_statistics_are_the_usual_ones():
    s = LatencyStats.of([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert s.count == 100 and s.min == pytest.approx(1.0) and s.max == pytest.approx(100.0)
    assert s.mean == pytest.approx(50.5) and s.p50 == pytest.approx(50.5) and s.p99 == pytest.approx(99.01)
    assert s.p90 < s.p95 < s.p99


def test_bench_times_our_call_and_the_plain_backend_call(digits_bundle: Path):
    (r,) = bench_bundle(digits_bundle, batches=[2], iterations=30, warmup=3)
    assert r.batch == 2 and r.latency.count == 30 and r.plain is not None and r.plain.count == 30
    assert r.latency.min <= r.latency.p50 <= r.latency.p99 <= r.latency.max
    assert -0.5 < r.overhead < 0.5  # median of side-by-side ratios; the real cost is microseconds
    assert r.throughput == pytest.approx(2 * 30 / (sum(r.samples_ms) / 1000), rel=1e-6)
    assert r.load_s > 0 and r.first_ms > 0 and r.peak_rss_mib > 10
    assert r.backend == "onnxruntime" and r.device == "cpu" and r.execution["providers"] == ["CPUExecutionProvider"]
    assert r.size_bytes == runtimes.open_bundle(digits_bundle).size_bytes and not r.interrupted


def test_warm_up_until_stable_and_end_to_end_mode(digits_bundle: Path):
    with runtimes.load(digits_bundle) as p:
        r = bench_predictor(p, mode="end-to-end", iterations=10)
        assert r.warmup_iterations >= 20 and r.warmup_iterations % 10 == 0  # at least two blocks compared
        assert r.mode == "end-to-end" and r.overhead is None and r.plain is not None
        assert r.latency.p50 > r.plain.p50  # resizing 480x640 images costs more than nothing
        # the breakdown: arrays in, so nothing to decode; the stages add up to about a whole call
        medians = [k for k in r.stages_ms if not k.endswith("_mean")]
        assert medians == ["preprocess", "model", "postprocess", "other"] and r.stages_ms["preprocess"] > 0
        # nothing of a call goes unaccounted: the stage means (with 'other') add up to the mean call
        means = sum(v for k, v in r.stages_ms.items() if k.endswith("_mean"))
        assert means == pytest.approx(r.latency.mean, rel=1e-6)


def test_end_to_end_from_files_times_decoding(digits_bundle: Path, tmp_path: Path):
    from PIL import Image

    from runtimes.preprocess import synthetic_images

    path = tmp_path / "frame.jpg"
    Image.fromarray(synthetic_images(1)[0]).save(path, quality=90)
    with runtimes.load(digits_bundle) as p:
        r = bench_predictor(p, mode="end-to-end", iterations=10, warmup=1, images=[str(path)])
    assert [k for k in r.stages_ms if not k.endswith("_mean")] == ["decode", "preprocess", "model", "postprocess", "other"]
    assert r.stages_ms["decode"] > 0


def test_ctrl_c_keeps_what_was_measured(digits_bundle: Path):
    def interrupt_after_two_blocks(done: int, total: int | None) -> None:
        if done >= 20:
            raise KeyboardInterrupt

    with runtimes.load(digits_bundle) as p:
        r = bench_predictor(p, iterations=1000, warmup=1, progress=interrupt_after_two_blocks)
    assert r.interrupted and r.latency.count == 20 and np.isfinite(r.latency.p99)


def test_bad_bench_settings_are_refused(digits_bundle: Path, digits_run, tmp_path: Path):
    with runtimes.load(digits_bundle) as p:
        with pytest.raises(InputError, match="mode"):
            bench_predictor(p, mode="fast")
        with pytest.raises(InputError, match="iterations"):
            bench_predictor(p, iterations=0)
    import edge_transfer as et

    (fixed,) = et.export(digits_run.path, out=tmp_path / "b4", batch_size=4)
    with runtimes.load(fixed.path) as p, pytest.raises(InputError, match="fixed batch of 4"):
        bench_predictor(p, batch=1, iterations=2, warmup=0)
    # bench with a fixed-batch bundle among dynamic ones keeps every result it can measure and names the rest
    r = run_cli("bench", str(digits_bundle), str(fixed.path), "--batch", "1,4", "--iterations", "5", "--warmup", "1", "--quiet")
    assert r.returncode == 0, r.stderr
    names = [line.split()[0] for line in r.stdout.splitlines()[2:] if line and not line.startswith("recommended")]
    assert names == ["digits-onnx", "digits-onnx", "b4"], r.stdout  # bundles named by their path tail
    assert f"not measured: {fixed.path} batch 1: fixed batch of 4 (exported with --batch-size 4)" in r.stderr
    only_fixed = run_cli("bench", str(fixed.path), "--batch", "1", "--iterations", "5", "--quiet")
    assert only_fixed.returncode == 2 and "nothing was measured" in only_fixed.stderr and "Traceback" not in only_fixed.stderr


def test_cli_compares_bundles_and_writes_json_csv_and_plot(format_bundles, tmp_path: Path, digits_run):
    from edge_transfer.data import load_digits_dataset, stratified_split
    from runtimes.preprocess import PreprocessConfig

    ds = load_digits_dataset()
    test = stratified_split(ds.targets, seed=0).test[:40]
    cfg = PreprocessConfig.from_dict(digits_run.config["preprocessing"])
    data = tmp_path / "held_out"
    for i, img in zip(test, ds.prepared_batch(test, cfg)):
        (data / ds.classes[ds.targets[i]]).mkdir(parents=True, exist_ok=True)
        np.save(data / ds.classes[ds.targets[i]] / f"{i}.npy", img)
    out = tmp_path / "bench"
    r = run_cli(
        "bench",
        str(format_bundles["onnx"]),
        str(format_bundles["openvino-int8"]),
        "--batch",
        "1,2",
        "--iterations",
        "20",
        "--warmup",
        "2",
        "--data",
        str(data),
        "--json",
        f"{out}.json",
        "--csv",
        f"{out}.csv",
        "--plot",
        f"{out}.png",
    )
    assert r.returncode == 0, r.stderr
    *table, recommended = r.stdout.strip().splitlines()
    header, *lines = table[:1] + table[2:]
    # one closing line: the fastest bundle that passed its export gate and its self-test here, at batch 1
    assert recommended.startswith("recommended: ") and "at batch 1" in recommended
    assert str(format_bundles["onnx"]) in recommended or str(format_bundles["openvino-int8"]) in recommended
    assert "p50 ms" in header and "p99 ms" in header and "speed-up" in header and "overhead" in header and "accuracy" in header
    assert len(lines) == 4 and lines[0].startswith("onnx ") and "1.00x" in lines[0] and "openvino-int8" in lines[2]
    doc = json.loads(Path(f"{out}.json").read_text())
    assert doc["machine"]["cpus"] >= 1 and len(doc["rows"]) == 4 and len(doc["results"]) == 4
    ov = doc["results"][2]
    assert ov["backend"] == "openvino" and ov["execution"]["execution_devices"] == ["CPU"] and ov["plain"]["count"] == 20
    assert all(0.5 < row["accuracy"] <= 1.0 for row in doc["rows"])
    with open(f"{out}.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["batch"] for row in rows] == ["1", "2", "1", "2"] and float(rows[0]["p50_ms"]) > 0
    assert Path(f"{out}.png").stat().st_size > 10_000


def test_bench_runs_on_the_device_without_torch(digits_bundle: Path, tmp_path: Path):
    r = run_cli("bench", str(digits_bundle), "--iterations", "10", "--warmup", "1", "--json", str(tmp_path / "b.json"), block_torch=True)
    assert r.returncode == 0, r.stderr
    assert "onnx" in r.stdout and json.loads((tmp_path / "b.json").read_text())["results"][0]["latency"]["count"] == 10


def test_cli_ctrl_c_prints_what_was_measured(digits_bundle: Path, tmp_path: Path):
    """SIGINT in the middle of a 60 s measurement: the table and the JSON still come out, exit code 130."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    code = "import sys\nfrom edge_transfer.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            "bench",
            str(digits_bundle),
            "--duration",
            "60",
            "--warmup",
            "1",
            "--quiet",
            "--json",
            str(tmp_path / "partial.json"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    time.sleep(10)  # import, load and one warm-up call take about a second; then it measures for 60 s
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "p50 ms" in out and "interrupted" in err
    doc = json.loads((tmp_path / "partial.json").read_text())
    assert doc["results"][0]["interrupted"] is True and doc["results"][0]["latency"]["count"] > 0


def test_the_recommendation_leaves_out_bundles_that_failed_their_gate(format_bundles):
    """`bench` with several bundles recommends only one that passed its export gate: onnx-int8-dynamic collapses on
    digits and is written only because the fixture allows failed bundles, so it is named and left out."""
    r = run_cli("bench", str(format_bundles["onnx"]), str(format_bundles["onnx-int8-dynamic"]), "--iterations", "5", "--warmup", "1")
    assert r.returncode == 0, r.stderr
    recommended = r.stdout.strip().splitlines()[-1]
    assert recommended.startswith(f"recommended: {format_bundles['onnx']} (onnx)"), recommended
    assert "left out: onnx-int8-dynamic (failed its export gate)" in recommended
    header, _, first, second = r.stdout.strip().splitlines()[:4]
    assert header.split()[-2:] == ["export", "gate"] and first.endswith("pass") and second.endswith("FAIL")  # the table says so too
    check = run_cli("check", str(format_bundles["onnx-int8-dynamic"]), "--json")
    assert json.loads(check.stdout)["validation_passed"] is False
    assert "gate       FAILED at export" in run_cli("check", str(format_bundles["onnx-int8-dynamic"])).stdout


def test_bench_plot_without_matplotlib_is_refused_before_measuring(digits_bundle: Path):
    """Without matplotlib, --plot is refused at once (nothing measured and lost), naming the package."""
    import subprocess
    import sys

    from conftest import ROOT

    code = "import sys\nsys.modules['matplotlib'] = None\nfrom edge_transfer.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    args = ["bench", str(digits_bundle), "--iterations", "100000", "--plot", "x.png"]
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "--plot needs matplotlib (pip install matplotlib); nothing was measured" in r.stderr
