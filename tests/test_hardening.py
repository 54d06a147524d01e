"""Model files are untrusted input; device apps run for months; interrupted work never leaves half a bundle.

ONNX external-data references outside the bundle, a SIGKILLed export, concurrent and long-running prediction with
measured memory, and property-based fuzzing of the manifest parser and the bundle loader (they may only ever raise
our typed errors)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runtimes
from runtimes.bench import _rss_mib  # the harness's own resident-memory reading
from runtimes.errors import EdgeTransferError, IntegrityError
from runtimes.manifest import parse_manifest

from conftest import ROOT, SMALL, run_cli
from crafted import bundle_with_model as _bundle_with_model
from crafted import edit_manifest as _edit_manifest
from crafted import ir_bundle as _ir_bundle
from crafted import labels as _labels
from crafted import model_with_external_tensor as _model_with_external_tensor
from crafted import relist as _relist
from crafted import toy_model as _toy_model

# ------------------------------------------------------------------------------------------------ external data


@pytest.mark.parametrize(
    "location,in_attribute,message",
    [
        ("../secret.bin", False, "not a relative path inside the bundle"),
        ("/etc/passwd", False, "not a relative path inside the bundle"),
        ("../secret.bin", True, "not a relative path inside the bundle"),
        ("weights.bin", False, "not listed in the manifest"),
    ],
)
def test_onnx_external_data_outside_the_bundle_is_refused(digits_bundle: Path, tmp_path: Path, location, in_attribute, message):
    (tmp_path / "secret.bin").write_bytes(b"\x00" * 8)
    bundle = _bundle_with_model(digits_bundle, tmp_path / "b", _model_with_external_tensor(location, in_attribute))
    with pytest.raises(IntegrityError, match=message):
        runtimes.load(bundle)


def test_onnx_external_data_inside_the_bundle_is_allowed(digits_bundle: Path, tmp_path: Path):
    from runtimes.onnx_refs import external_data_locations

    bundle = _bundle_with_model(
        digits_bundle, tmp_path / "b", _model_with_external_tensor("weights.bin"), extra={"weights.bin": np.array([1.5, -2.0], np.float32).tobytes()}
    )
    runtimes.open_bundle(bundle)  # verifies: the reference names a listed, checksummed file of the bundle
    assert external_data_locations(bundle / "model.onnx") == ["weights.bin"]
    assert external_data_locations(digits_bundle / "model.onnx") == []


# ------------------------------------------------------------------------------------------------ SIGKILL


def test_sigkill_during_export_leaves_the_previous_bundle_or_none(digits_run, tmp_path: Path):
    """Kill -9 an export at several moments: the target is always absent or the previous complete bundle."""
    out = tmp_path / "bundle"
    code = "import sys\nfrom edge_transfer.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    cmd = [sys.executable, "-c", code, "export", str(digits_run.path), "--format", "onnx,openvino", "--out", str(out), "--overwrite", "--quiet"]
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=600).returncode == 0
    for delay in (6.0,):  # one real SIGKILL mid-export; every commit point is covered deterministically below
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        for fmt in ("onnx", "openvino"):
            if (out / fmt).exists():
                runtimes.open_bundle(out / fmt)  # complete and verified: the old one or a fully published new one
        leftovers = [p.name for p in tmp_path.rglob("*") if ".partial-" in p.name or ".old-" in p.name]
        assert all(not (out / fmt).exists() or (out / fmt / "manifest.json").exists() for fmt in ("onnx", "openvino"))
        # hidden temp siblings may remain after SIGKILL (nothing can clean up), but never at the target path
        assert all(name.startswith(".") for name in leftovers)


_DIE_AT_RENAME = """
import os, sys
from pathlib import Path
from runtimes.bundle import BundleWriter

when, n = sys.argv[2], int(sys.argv[3])
real_replace, calls = os.replace, [0]

def replace(src, dst):  # the process dies before or after the n-th rename, as a power cut or kill -9 would
    calls[0] += 1
    if calls[0] == n and when == "before":
        os._exit(9)
    real_replace(src, dst)
    if calls[0] == n and when == "after":
        os._exit(9)

os.replace = replace
with BundleWriter(sys.argv[1], overwrite=True) as w:
    (w.dir / "model.onnx").write_bytes(Path(sys.argv[5]).read_bytes())
    (w.dir / "version.txt").write_text("new")
    w.commit({"model": {"backend": "onnxruntime", "format": "onnx", "precision": "fp32", "entrypoint": "model.onnx"},
              **{k: v for k, v in __import__("json").loads(sys.argv[4]).items() if k != "model"}})
print("renames", calls[0])
"""


def test_death_at_every_commit_point_leaves_the_previous_bundle_the_new_one_or_none(digits_bundle: Path, tmp_path: Path):
    """Deterministic fault injection: the writer's process dies just before, then just after, each rename of a
    publish (manifest into place, old bundle aside, new bundle into place). The target is always absent, the
    previous complete bundle, or the complete new one; never a mixture, and leftovers are hidden siblings."""
    doc = json.loads((digits_bundle / "manifest.json").read_text())
    target = tmp_path / "b"

    def previous() -> None:
        shutil.rmtree(tmp_path, ignore_errors=True)
        tmp_path.mkdir()
        with runtimes.BundleWriter(target) as w:
            shutil.copyfile(digits_bundle / "model.onnx", w.dir / "model.onnx")
            (w.dir / "version.txt").write_text("old")
            w.commit({k: v for k, v in doc.items() if k != "model"} | {"model": {**doc["model"], "files": []}})

    def attempt(when: str, n: int) -> subprocess.CompletedProcess:
        args = [str(target), when, str(n), json.dumps(doc), str(digits_bundle / "model.onnx")]
        return subprocess.run([sys.executable, "-c", _DIE_AT_RENAME, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)

    previous()
    clean = attempt("never", 0)
    assert clean.returncode == 0, clean.stderr
    renames = int(clean.stdout.split()[-1])
    assert renames >= 3  # manifest.json into place, the old bundle aside, the new one into place
    seen = set()
    for n in range(1, renames + 1):
        for when in ("before", "after"):
            previous()
            r = attempt(when, n)
            assert r.returncode == 9, r.stderr
            if target.exists():
                seen.add(runtimes.open_bundle(target).file("version.txt").read_text())  # verified: complete
            else:
                seen.add("absent")
            leftovers = [p.name for p in tmp_path.iterdir() if p.name != "b"]
            assert all(name.startswith(".") for name in leftovers), leftovers
    assert seen <= {"old", "new", "absent"} and {"old", "new"} <= seen, seen


# ------------------------------------------------------------------------------------------------ under load


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (n, SMALL, SMALL, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["onnx", "openvino", "onnx-int8"])
def test_predict_from_many_threads_gives_the_same_answers(format_bundles, fmt: str):
    images = _images(16)
    with runtimes.load(format_bundles[fmt]) as p:
        expected = p.run(images)
        errors: list[BaseException] = []
        results: dict[int, np.ndarray] = {}

        def worker(k: int) -> None:
            try:
                for i in range(20):
                    j = (k + i) % 16
                    out = p.run(images[j : j + 1])
                    results.setdefault(j, out)
                    np.testing.assert_allclose(out, expected[j : j + 1], rtol=1e-4, atol=1e-4)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert len(results) == 16


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="resident memory is read from /proc (Linux)")
def test_soak_thousands_of_predictions_keep_memory_and_answers_stable(digits_bundle: Path):
    frames = [np.random.default_rng(i).integers(0, 255, (48 + i % 7, 40 + i % 5, 3), dtype=np.uint8) for i in range(10)]
    with runtimes.load(digits_bundle) as p:
        first = [p.predict(f, top_k=3)[0] for f in frames]
        for _ in range(200):  # warm up allocator pools before the baseline
            p.predict(frames[0])
        baseline = _rss_mib()
        for i in range(2000):
            top = p.predict(frames[i % 10], top_k=3)[0]
            assert top == first[i % 10]
        growth = _rss_mib() - baseline
    assert growth < 20, f"resident memory grew {growth:.1f} MiB over 2000 predictions"


def test_device_loop_survives_a_bad_frame(digits_bundle: Path):
    """The pattern from examples/: a bad frame raises InputError, the loop logs it and carries on."""
    frames = [_images(1)[0], np.zeros((0, 0, 3), np.uint8), np.full((8, 8), np.nan, np.float32), _images(2)[1], "not-an-image"]
    ok, bad = 0, []
    with runtimes.load(digits_bundle) as p:
        for frame in frames:
            try:
                p.predict(frame)
                ok += 1
            except EdgeTransferError as exc:
                bad.append(str(exc))
    assert ok == 2 and len(bad) == 3 and all(msg for msg in bad)


# ------------------------------------------------------------------------------------------------ fuzzing


def _valid_manifest(digits_bundle: Path) -> dict:
    return json.loads((digits_bundle / "manifest.json").read_text())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=json_values)
def test_manifest_parser_only_raises_typed_errors_on_random_documents(doc):
    try:
        parse_manifest(doc)
    except EdgeTransferError:
        pass


def _paths(d, prefix=()):
    if isinstance(d, dict):
        for k, v in d.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_manifest_parser_only_raises_typed_errors_on_mutated_manifests(digits_bundle: Path, data):
    doc = _valid_manifest(digits_bundle)
    paths = list(_paths(doc))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        parent = doc
        try:
            for key in path[:-1]:
                parent = parent[key]
            action = data.draw(st.sampled_from(["replace", "delete"]))
            if action == "delete":
                del parent[path[-1]]
            else:
                parent[path[-1]] = data.draw(json_values)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or retyped this path
    try:
        parse_manifest(doc)
    except EdgeTransferError:
        pass


def _mutated(data: st.DataObject, content: bytes) -> bytes:
    """`content` with 1-8 bytes flipped, cut short, or with bytes appended: always different from `content`."""
    raw = bytearray(content)
    kind = data.draw(st.sampled_from(["flip", "truncate", "append"]))
    if kind == "flip":  # distinct positions: flipping one byte twice could give the original back
        for i in data.draw(st.sets(st.integers(0, len(raw) - 1), min_size=1, max_size=8)):
            raw[i] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        raw += data.draw(st.binary(min_size=1, max_size=64))
    assert bytes(raw) != content
    return bytes(raw)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_bundle_loader_refuses_random_corruption_with_typed_errors(digits_bundle: Path, tmp_path_factory, data):
    """Flip, cut or append bytes of the model or the manifest. A changed model file is always an IntegrityError; a
    changed manifest loads (nothing that matters changed) or raises one of our errors, never a parser crash."""
    root = tmp_path_factory.mktemp("fuzz") / "b"
    shutil.copytree(digits_bundle, root)
    victim = root / data.draw(st.sampled_from(["model.onnx", "manifest.json"]))
    victim.write_bytes(_mutated(data, victim.read_bytes()))
    if victim.name == "model.onnx":  # a listed file changed (every mutation above changes it): the checksum catches it
        with pytest.raises(IntegrityError):
            runtimes.load(root)
        return
    try:
        with runtimes.load(root) as p:
            p.run(_images(1))
    except EdgeTransferError:
        pass  # anything else (a JSON/parser exception) fails the test


@settings(max_examples=200, deadline=None)
@given(blob=st.binary(max_size=512))
def test_onnx_reference_walker_only_raises_typed_errors(tmp_path_factory, blob):
    from runtimes.onnx_refs import external_data_locations

    path = tmp_path_factory.mktemp("walk") / "m.onnx"
    path.write_bytes(blob)
    try:
        external_data_locations(path)
    except EdgeTransferError:
        pass


def rss_limit_flag() -> str:
    """libFuzzer's usual 2 GiB RSS limit on top of what the harness starts with: the limit reads the peak RSS, which
    a child inherits from this (large) pytest process across fork+exec on Linux."""
    import resource

    return f"-rss_limit_mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024 + 2048}"


def test_atheris_harness_smoke_run(digits_bundle: Path, tmp_path: Path):
    """A bounded libFuzzer run of tests/fuzz/fuzz_bundle.py, seeded with a real manifest and model header."""
    pytest.importorskip("atheris", reason="atheris (libFuzzer for Python) is not installed here")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "manifest").write_bytes(b"\x00" + (digits_bundle / "manifest.json").read_bytes())
    (corpus / "model").write_bytes(b"\x01" + (digits_bundle / "model.onnx").read_bytes()[:4096])
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "fuzz" / "fuzz_bundle.py"),
            str(corpus),
            "-runs=3000",
            "-max_len=8192",
            rss_limit_flag(),
            f"-artifact_prefix={tmp_path}/",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Done 3000 runs" in r.stderr


@pytest.fixture(scope="module")
def load_harness():
    """tests/fuzz/fuzz_load.py's harness: a toy ONNX Runtime bundle and its OpenVINO IR twin, loadable in milliseconds."""
    sys.path.insert(0, str(ROOT / "tests" / "fuzz"))
    import fuzz_load

    harness = fuzz_load.Harness()
    yield fuzz_load, harness
    shutil.rmtree(harness.work, ignore_errors=True)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_rehashed_mutated_bundles_answer_or_raise_typed_errors(load_harness, data):
    """Flip, cut or append bytes of the manifest, the ONNX model, the IR's XML or its weights, then re-make the
    checksums: the mutation reaches the parser, the model checks and the backend, which may answer or raise our
    errors, never anything else (the harness lets only EdgeTransferError through)."""
    fuzz_load, harness = load_harness
    target = data.draw(st.integers(0, len(fuzz_load.TARGETS) - 1))
    backend, name = fuzz_load.TARGETS[target]
    if backend not in harness.seeds:
        pytest.skip(f"{backend} is not installed here")
    raw = _mutated(data, harness.seeds[backend][name])
    harness(bytes([target]) + (b"\x00" if name == "manifest.json" else b"") + raw)


@pytest.mark.parametrize("case", sorted(p.name for p in (ROOT / "tests" / "fuzz" / "regressions").iterdir()))
def test_inputs_the_load_fuzzer_once_crashed_on_are_typed_errors(load_harness, case):
    """Each file is one file's content that libFuzzer found (name: target number, what it broke); it must now give
    a BundleError."""
    fuzz_load, harness = load_harness
    target = int(case.split("-")[0])
    backend, name = fuzz_load.TARGETS[target]
    if backend not in harness.seeds:
        pytest.skip(f"{backend} is not installed here")
    content = (ROOT / "tests" / "fuzz" / "regressions" / case).read_bytes()
    harness.outcomes.clear()
    harness(bytes([target]) + (b"\x00" if name == "manifest.json" else b"") + content)
    assert harness.outcomes == {f"{backend}/{name}: BundleError": 1}


def test_atheris_load_harness_smoke_run(load_harness, tmp_path: Path):
    """A bounded libFuzzer run of tests/fuzz/fuzz_load.py (the long run's count is in the README)."""
    pytest.importorskip("atheris", reason="atheris (libFuzzer for Python) is not installed here")
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "fuzz" / "fuzz_load.py"),
            str(tmp_path / "corpus"),
            "-runs=1500",
            "-max_len=20000",
            "-len_control=0",
            rss_limit_flag(),
            f"-artifact_prefix={tmp_path}/",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Done 1500 runs" in r.stderr and "fuzz_load: " in r.stderr


class _Gadget:
    """Stands for any object a hostile pickle would construct; weights_only=True must never build it."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_torch_checkpoints_load_weights_only_and_refuse_pickled_objects(tmp_path: Path):
    import timm
    import torch

    from edge_transfer.sources import create_backbone
    from runtimes.errors import CheckpointError

    (tmp_path / "config.json").write_text(json.dumps({"backbone": "timm:mobilenetv3_small_050"}))
    good = tmp_path / "model.pth"
    torch.save({"state_dict": timm.create_model("mobilenetv3_small_050", pretrained=False).state_dict()}, good)
    bb = create_backbone(str(good))
    assert bb.source["weights"] == str(good) and len(bb.source["weights_sha256"]) == 64
    hostile = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Gadget()}, hostile)
    with pytest.raises(CheckpointError, match="refused.*Python objects.*safetensors"):
        create_backbone(str(hostile))


# ------------------------------------------------------------------------------------------------ swap race


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_a_model_file_swapped_during_load_never_runs(fmt, format_bundles, tmp_path: Path):
    """A thread swaps the model file between the checked graph and another one (hard link + os.replace) while the
    main thread loads: every load either refuses (IntegrityError) or runs the graph whose sha256 it checked."""
    import threading

    import onnx
    from onnx import numpy_helper

    bundle = tmp_path / "b"
    shutil.copytree(format_bundles[fmt], bundle)
    target = bundle / ("model.onnx" if fmt == "onnx" else "model.bin")
    good, other = tmp_path / "good", tmp_path / "other"
    shutil.copyfile(target, good)
    if fmt == "onnx":
        model = onnx.load(good)
        w = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 1.5, w.name))
        onnx.save(model, other)
    else:  # the same layout, other weights: every float32 weight doubled
        weights = np.frombuffer(good.read_bytes(), np.uint8).copy()
        weights[: len(weights) // 4 * 4].view(np.float32)[:] *= 2.0
        other.write_bytes(weights.tobytes())
    images = np.random.default_rng(0).integers(0, 255, (4, SMALL, SMALL, 3), dtype=np.uint8)
    with runtimes.load(bundle) as p:
        expected = p.run(images)
    stop = threading.Event()

    def swapper() -> None:
        i = 0
        while not stop.is_set():
            link = tmp_path / f"link{i % 2}"
            link.unlink(missing_ok=True)
            os.link(other if i % 2 == 0 else good, link)
            os.replace(link, target)
            i += 1

    thread = threading.Thread(target=swapper)
    thread.start()
    ran = refused = swapped = 0
    try:
        for _ in range(150):
            if ran >= 12 and refused >= 12:  # both outcomes seen often enough (an OpenVINO load compiles: seconds each)
                break
            try:
                with runtimes.load(bundle) as p:
                    out = p.run(images)
            except IntegrityError:
                refused += 1
                continue
            ran += 1
            swapped += not np.allclose(out, expected, atol=1e-4)
    finally:
        stop.set()
        thread.join()
    assert swapped == 0 and ran > 0 and refused > 0, (ran, refused, swapped)


# ------------------------------------------------------------------------------------------------ model vs manifest


def test_outputs_are_bound_by_name_not_position(digits_bundle: Path, tmp_path: Path):
    model, w = _toy_model(outputs=("features", "logits"))
    bundle = _bundle_with_model(digits_bundle, tmp_path / "b", model)
    img = np.random.default_rng(1).integers(0, 255, (SMALL, SMALL, 3), dtype=np.uint8)
    expected = int(np.argmax(img.reshape(-1, 3).astype(np.float64).mean(0) @ w))
    with runtimes.load(bundle) as p:
        assert p.predict(img, top_k=1)[0][0].index == expected != 7


@pytest.mark.parametrize("n_labels", [20, 5])
def test_labels_must_match_the_output_width(n_labels, digits_bundle: Path, tmp_path: Path):
    model, _ = _toy_model()
    bundle = _labels(_bundle_with_model(digits_bundle, tmp_path / "b", model), [f"c{i}" for i in range(n_labels)])
    with pytest.raises(runtimes.BundleError, match=f"10 values per image in the model, but the manifest lists {n_labels} labels"):
        runtimes.load(bundle)


def test_input_dtype_must_match_the_manifest(digits_bundle: Path, tmp_path: Path):
    from onnx import TensorProto

    model, _ = _toy_model(in_type=TensorProto.FLOAT)
    with pytest.raises(runtimes.BundleError, match="input 'images' is float32 in the model, uint8 in the manifest"):
        runtimes.load(_bundle_with_model(digits_bundle, tmp_path / "b", model))


def test_nan_logits_are_refused_by_predict_and_returned_raw_by_run(digits_bundle: Path, tmp_path: Path):
    model, _ = _toy_model(nan=True)
    bundle = _bundle_with_model(digits_bundle, tmp_path / "b", model)
    with runtimes.load(bundle) as p:
        img = np.full((1, SMALL, SMALL, 3), 10, np.uint8)
        assert not np.isfinite(p.run(img)).all()
        with pytest.raises(runtimes.InferenceError, match=r"NaN/inf logits for image\(s\) 0"):
            p.predict(img)


def test_openvino_binds_by_name_and_checks_the_label_count(format_bundles, tmp_path: Path):
    model, w = _toy_model(outputs=("features", "logits"))
    bundle = _ir_bundle(format_bundles["openvino"], tmp_path / "ir", model)
    img = np.random.default_rng(1).integers(0, 255, (SMALL, SMALL, 3), dtype=np.uint8)
    expected = int(np.argmax(img.reshape(-1, 3).astype(np.float64).mean(0) @ w))
    with runtimes.load(bundle) as p:
        assert p.predict(img, top_k=1)[0][0].index == expected != 7
    with pytest.raises(runtimes.BundleError, match="manifest lists 20 labels"):
        runtimes.load(_labels(bundle, [f"c{i}" for i in range(20)]))


# ------------------------------------------------------------------------------------------------ parser limits


@pytest.mark.parametrize(
    "name,edit,message",
    [
        ("1000-deep JSON", lambda t: t.rstrip()[:-1] + ', "x": ' + "[" * 1000 + "]" * 1000 + "}", "not a usable manifest"),
        ("40-deep JSON", lambda t: t.rstrip()[:-1] + ', "x": ' + "[" * 40 + "]" * 40 + "}", "nested deeper than 32"),
        ("5000-digit integer", lambda t: t.replace('"schema_version": 1', '"schema_version": ' + "9" * 5000), "5000 digits"),
        ("NaN constant", lambda t: t.replace('"crop_pct": 1.0', '"crop_pct": NaN'), "NaN is not valid JSON"),
        ("crop_pct as a string", lambda t: t.replace('"crop_pct": 1.0', '"crop_pct": "1"'), "crop_pct must be in"),
        ("input size 100000", lambda t: t.replace(f"{SMALL}, {SMALL}", "100000, 100000"), "from 1 to 8192"),
        ("fixed batch 10^12", lambda t: t.replace(f'"batch", {SMALL}', f"1000000000000, {SMALL}", 1), "at most 4096"),
    ],
)
def test_manifest_parser_limits_give_typed_errors(name, edit, message, digits_bundle: Path, tmp_path: Path):
    bundle = tmp_path / "b"
    shutil.copytree(digits_bundle, bundle)
    text = json.dumps(json.loads((bundle / "manifest.json").read_text()))  # one line, ", " separators
    changed = edit(text)
    assert changed != text, name
    (bundle / "manifest.json").write_text(changed)
    with pytest.raises(runtimes.BundleError, match=message):
        runtimes.read_manifest(bundle)


# ------------------------------------------------------------------------------------------------ close, big batches, odd images


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_close_while_threads_predict_gives_answers_or_a_typed_error(fmt, format_bundles):
    p = runtimes.load(format_bundles[fmt])
    img = np.zeros((SMALL, SMALL, 3), np.uint8)
    untyped: list[BaseException] = []

    def worker() -> None:
        for _ in range(300):
            try:
                p.predict(img, top_k=1)
            except runtimes.InferenceError:
                return
            except BaseException as exc:  # the bug this test looks for
                untyped.append(exc)
                return

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    p.close()
    for t in threads:
        t.join()
    assert untyped == []
    with pytest.raises(runtimes.InferenceError, match="closed"):
        p.run(np.zeros((1, SMALL, SMALL, 3), np.uint8))


def test_run_hands_the_backend_bounded_chunks(digits_bundle: Path, monkeypatch):
    from runtimes.predictor import RUN_CHUNK

    with runtimes.load(digits_bundle) as p:
        sizes: list[int] = []
        inner = p._run_impl
        monkeypatch.setattr(p, "_run_impl", lambda b: sizes.append(len(b)) or inner(b))
        batch = np.random.default_rng(0).integers(0, 255, (RUN_CHUNK * 2 + 3, SMALL, SMALL, 3), dtype=np.uint8)
        out = p.run(batch)
        assert out.shape == (len(batch), 10) and sizes == [RUN_CHUNK, RUN_CHUNK, 3]
        assert np.allclose(out[-3:], inner(batch[-3:]), atol=1e-5)


def test_ragged_input_is_an_input_error(digits_bundle: Path):
    with runtimes.load(digits_bundle) as p:
        for bad in ([[1, 2], [3]], [[[1, 2, 3]], [[1, 2]]], b"bytes", {"a": 1}):
            with pytest.raises(runtimes.InputError):
                p.predict(bad)


def test_images_as_users_take_them(tmp_path: Path, monkeypatch):
    from PIL import Image

    from runtimes.preprocess import prepare_image, read_image, to_rgb_uint8

    im = Image.new("RGB", (20, 10), (255, 0, 0))
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display": a portrait photo stored sideways
    im.save(tmp_path / "portrait.jpg", exif=exif)
    assert read_image(str(tmp_path / "portrait.jpg")).shape == (20, 10, 3)
    Image.fromarray(np.full((8, 8), 0.5, np.float32), mode="F").save(tmp_path / "half.tif")
    assert to_rgb_uint8(read_image(str(tmp_path / "half.tif"))).max() == 128  # not black
    Image.fromarray(np.full((8, 8), 1000, np.int32), mode="I").save(tmp_path / "i16.tif")
    assert read_image(str(tmp_path / "i16.tif")).dtype == np.uint16  # scaled as 16-bit, not saturated white
    Image.fromarray(np.full((8, 8), 70000, np.int32), mode="I").save(tmp_path / "i32.tif")
    with pytest.raises(runtimes.InputError, match="32-bit integer image with values 70000..70000"):
        read_image(str(tmp_path / "i32.tif"))
    Image.fromarray(np.full((8, 8), 2.0, np.float32), mode="F").save(tmp_path / "hdr.tif")
    with pytest.raises(runtimes.InputError, match=r"float images must hold values in \[0, 1\]"):
        prepare_image(read_image(str(tmp_path / "hdr.tif")), runtimes.PreprocessConfig(input_size=(8, 8)))
    Image.new("L", (7000, 7000)).save(tmp_path / "big.png")
    monkeypatch.setenv("EDGE_TRANSFER_MAX_IMAGE_PIXELS", "1000000")
    with pytest.raises(runtimes.InputError, match="7000x7000 pixels is more than this device accepts"):
        read_image(str(tmp_path / "big.png"))


@pytest.mark.parametrize("case", ["empty model", "custom-op domain", "manifest size 32, graph 64"])
def test_models_onnxruntime_cannot_load_are_bundle_errors(case, digits_bundle: Path, tmp_path: Path):
    from onnx import helper

    bundle = tmp_path / "b"
    if case == "empty model":
        shutil.copytree(digits_bundle, bundle)
        (bundle / "model.onnx").write_bytes(b"")
        _relist(bundle)
    elif case == "custom-op domain":
        model, _ = _toy_model()
        model.graph.node[2].domain = "com.example.custom"
        model.opset_import.append(helper.make_opsetid("com.example.custom", 1))
        _bundle_with_model(digits_bundle, bundle, model)
    else:
        model, _ = _toy_model()
        _bundle_with_model(digits_bundle, bundle, model)
        doc = json.loads((bundle / "manifest.json").read_text())
        doc["preprocessing"]["input_size"] = [32, 32]
        doc["inputs"][0]["shape"] = ["batch", 32, 32, 3]
        (bundle / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(runtimes.BundleError):
        runtimes.load(bundle)


# ------------------------------------------------------------------------------------------------ files, names, the CLI


_DROP_FILE_ACCESS = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]


def _inspect_obeying_file_modes(bundle: Path) -> subprocess.CompletedProcess:
    """`edge-transfer inspect BUNDLE` in a process that file modes apply to. Root (CI, containers) ignores them, so
    there the CLI runs without the two capabilities that override them (util-linux setpriv), still as root."""
    code = "import sys\nfrom edge_transfer.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    prefix = _DROP_FILE_ACCESS if os.geteuid() == 0 else []
    return subprocess.run(
        [*prefix, sys.executable, "-c", code, "inspect", str(bundle)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        timeout=300,
    )


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX file modes")
@pytest.mark.parametrize(
    "what,mode_of,message",
    [
        ("unreadable model file", "model.onnx", "bundle file 'model.onnx' cannot be read: Permission denied"),
        ("unsearchable listed subdirectory", "selftest", "bundle file 'selftest/golden/000.png' cannot be read: Permission denied"),
        ("unlistable unlisted subdirectory", "extra", "bundle directory 'extra' cannot be listed: Permission denied"),
        ("unlistable bundle directory", ".", "bundle directory '.' cannot be listed: Permission denied"),
        ("unsearchable bundle directory", "..", "cannot be read: Permission denied"),
    ],
)
def test_files_this_user_may_not_read_are_typed_errors(what, mode_of, message, digits_bundle: Path):
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without util-linux setpriv: file modes cannot be made to apply")
    top = Path(tempfile.mkdtemp(prefix="perm-"))
    try:
        bundle = top / "b"
        shutil.copytree(digits_bundle, bundle)
        if mode_of == "extra":  # a directory the manifest does not list, holding a file the check must not miss
            (bundle / "extra").mkdir()
            (bundle / "extra" / "payload.onnx").write_bytes(b"x")
        modes = {"model.onnx": 0o000, "selftest": 0o000, "extra": 0o000, ".": 0o311, "..": 0o000}
        os.chmod(bundle if mode_of in (".", "..") else bundle / mode_of, modes[mode_of])
        r = _inspect_obeying_file_modes(bundle)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith("error: ") and message in r.stderr, r.stderr
    finally:
        for p in [top, *top.rglob("*")] if top.exists() else []:
            os.chmod(p, 0o755)
        shutil.rmtree(top, ignore_errors=True)


def test_file_names_that_are_not_utf8(digits_bundle: Path, tmp_path: Path):
    """A listed name with a lone surrogate (what JSON can carry of undecodable bytes) and an unlisted file whose
    name is not valid UTF-8 on disk: both typed, and the message prints."""
    listed = _relist(shutil.copytree(digits_bundle, tmp_path / "listed"))
    doc = json.loads((listed / "manifest.json").read_text())
    doc["model"]["files"].append({"path": "x\udcff.bin", "sha256": "0" * 64, "bytes": 1})
    (listed / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match=r"'x\\udcff.bin' is not valid UTF-8"):
        runtimes.load(listed)

    unlisted = shutil.copytree(digits_bundle, tmp_path / "unlisted")
    with open(os.fsencode(unlisted) + b"/notes-\xff.txt", "wb") as f:
        f.write(b"hi")
    r = run_cli("inspect", str(unlisted), block_torch=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "file 'notes-\\udcff.txt' is in the bundle but not listed in the manifest" in r.stderr


@pytest.mark.parametrize(
    "edit,shown",
    [
        (lambda d: d["validation"].update(max_abs_logit_diff=None), "max |diff| n/a"),
        (lambda d: d["validation"].update(max_abs_logit_diff="0.1"), "max |diff| <malformed: '0.1'>"),
        (lambda d: d["validation"].update(top1_agreement="99%"), "agreement <malformed: '99%'>"),
        (lambda d: d["validation"].update(accuracy_drop=[1]), "drop <malformed: '[1]'> pt"),
        (lambda d: d["model"].update(conversion="torch.onnx"), "conversion  <malformed: 'torch.onnx'>"),
        (lambda d: d["model"].update(conversion={"float_layers": "stem"}), "self-test"),
    ],
)
def test_inspect_prints_what_it_can_and_marks_malformed_fields(edit, shown, digits_bundle: Path, tmp_path: Path):
    bundle = _edit_manifest(shutil.copytree(digits_bundle, tmp_path / "b"), edit)
    r = run_cli("inspect", str(bundle), block_torch=True)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert shown in r.stdout and "labels      10" in r.stdout


def test_labels_with_unprintable_characters_print_safely(digits_bundle: Path, tmp_path: Path):
    bundle = _edit_manifest(shutil.copytree(digits_bundle, tmp_path / "b"), lambda d: d.update(labels=[f"cls\udcff{i}" for i in range(10)]))
    image = tmp_path / "digit.png"
    from PIL import Image

    Image.fromarray(_images(1)[0]).save(image)
    for args in (("inspect", str(bundle)), ("predict", str(bundle), str(image))):
        r = run_cli(*args, block_torch=True, env={"PYTHONIOENCODING": "utf-8"})
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert "cls\\udcff" in r.stdout


def test_reliability_table_script_finds_every_case_typed_or_answered(digits_bundle: Path):
    """scripts/reliability_table.py makes the README's table; every row must be a typed error or a right answer."""
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "reliability_table.py"), str(digits_bundle)], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) > 40 and not any(w in r.stdout for w in ("UNTYPED", "WRONG", "FAILED"))
    assert "the original bundle is byte-identical afterwards: True" in r.stdout
