"""atheris (libFuzzer) harness for whole bundles: one file of a small real bundle is replaced by fuzzed bytes, the
manifest's sha256 and sizes are re-made, as a buggy or hostile producer would, and the bundle goes through
`runtimes.load`, `run` and `predict`. Because the checksums match, mutations reach the manifest parser, the
model-vs-manifest checks and the backends (ONNX Runtime and OpenVINO). Only our typed errors may escape.

    python tests/fuzz/fuzz_load.py CORPUS_DIR -runs=50000       # CORPUS_DIR may start empty: it is seeded
The first input byte picks the file: 0 manifest.json, 1 model.onnx (ONNX Runtime bundle), 2 model.xml or 3 model.bin
(OpenVINO bundle); the rest is its new content. For a fuzzed manifest the checksums are re-made when the second
byte is even (so the file list itself is fuzzed too). Coverage feedback comes from our Python code, so the fuzzer
drifts towards manifests; FUZZ_LOAD_TARGET=N fuzzes file N alone (inputs are then its bare content). It prints a
tally of outcomes every 1,000 bundles. CI runs it briefly (tests/test_hardening.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SIZE = 32  # the toy model's input side: loads in milliseconds, so tens of thousands of runs fit in minutes
TARGETS = (("onnxruntime", "manifest.json"), ("onnxruntime", "model.onnx"), ("openvino", "model.xml"), ("openvino", "model.bin"))
IMAGE = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)


def toy_onnx() -> bytes:
    """uint8 NHWC images -> conv 3x3 (8 channels) -> ReLU -> global average -> 10 logits; a real small CNN graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(np.zeros(8, np.float32), "conv_b"),
        numpy_helper.from_array(rng.normal(size=(8, 10)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.full(10, 0.1, np.float32), "fc_b"),
        numpy_helper.from_array(np.float32(1 / 255), "scale"),
    ]
    nodes = [
        helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["f", "scale"], ["x"]),
        helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "toy",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def manifest(backend: str) -> dict:
    entry = "model.xml" if backend == "openvino" else "model.onnx"
    return {
        "schema_version": 1,
        "created": "2026-11-28T00:00:00Z",
        "inputs": [{"name": "images", "dtype": "uint8", "shape": ["batch", SIZE, SIZE, 3], "layout": "NHWC"}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 10]}],
        "preprocessing": {
            "input_size": [SIZE, SIZE],
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "mean": [0.5] * 3,
            "std": [0.5] * 3,
            "colour_order": "RGB",
            "layout": "NHWC",
            "dtype": "uint8",
            "normalize_in_graph": True,
        },
        "labels": [str(i) for i in range(10)],
        "model": {
            "backend": backend,
            "format": "openvino" if backend == "openvino" else "onnx",
            "precision": "fp32",
            "entrypoint": entry,
            "files": [],
        },
    }


def seed_bundles(work: Path) -> dict[str, dict[str, bytes]]:
    """The two seed bundles' files: {backend: {name: bytes}} (manifests without their file lists)."""
    onnx_bytes = toy_onnx()
    files = {"onnxruntime": {"model.onnx": onnx_bytes}}
    try:
        import openvino as ov

        (work / "toy.onnx").write_bytes(onnx_bytes)
        ov.save_model(ov.convert_model(str(work / "toy.onnx")), str(work / "toy.xml"), compress_to_fp16=False)
        files["openvino"] = {"model.xml": (work / "toy.xml").read_bytes(), "model.bin": (work / "toy.bin").read_bytes()}
    except ImportError:
        pass
    for backend, named in files.items():
        named["manifest.json"] = json.dumps(manifest(backend)).encode()
    return files


def relist(bundle: Path, doc: dict) -> None:
    """Re-make the manifest's file list (sha256, bytes) from what is on disk."""
    doc["model"]["files"] = [
        {"path": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "bytes": p.stat().st_size}
        for p in sorted(bundle.iterdir())
        if p.name != "manifest.json"
    ]


def write_bundle(bundle: Path, seeds: dict[str, dict[str, bytes]], data: bytes) -> bool:
    """Write the seed bundle that `data` targets with one file replaced; False when that backend is absent."""
    backend, name = TARGETS[data[0] % len(TARGETS)]
    if backend not in seeds:
        return False
    shutil.rmtree(bundle, ignore_errors=True)
    bundle.mkdir(parents=True)
    payload = data[1:] if name != "manifest.json" else data[2:]
    for fname, content in seeds[backend].items():
        if fname != "manifest.json":
            (bundle / fname).write_bytes(payload if fname == name else content)
    if name == "manifest.json":
        (bundle / "manifest.json").write_bytes(payload)
        rehash = len(data) > 1 and data[1] % 2 == 0
        try:
            doc = json.loads(payload.decode("utf-8"))
        except (ValueError, RecursionError):
            return True  # not JSON: goes to the loader as it is
        if rehash and isinstance(doc, dict) and isinstance(doc.get("model"), dict):
            relist(bundle, doc)
            (bundle / "manifest.json").write_text(json.dumps(doc))
        return True
    doc = json.loads(seeds[backend]["manifest.json"])
    relist(bundle, doc)
    (bundle / "manifest.json").write_text(json.dumps(doc))
    return True


def load_and_predict(bundle: Path) -> str:
    """The device's path; only EdgeTransferError may leave it. Returns "answered" or the typed error's name."""
    import runtimes
    from runtimes.errors import EdgeTransferError

    try:
        with runtimes.load(bundle) as p:
            h, w = p.preprocessing.input_size
            p.run(np.zeros((2, h, w, 3), np.uint8))
            p.predict(IMAGE, top_k=3)
    except EdgeTransferError as exc:
        return type(exc).__name__
    return "answered"


class Harness:
    def __init__(self, report_every: int = 0, target: int | None = None) -> None:
        self.target = target  # fuzz one file only: inputs are then that file's content, with no selector byte
        self.report_every = report_every  # libFuzzer ends the process with exit(), so the tally is printed as it goes
        self.work = Path(tempfile.mkdtemp(prefix="fuzz-load-"))
        self.seeds = seed_bundles(self.work)
        self.outcomes: Counter[str] = Counter()

    def seed_corpus(self, corpus: Path) -> None:
        corpus.mkdir(parents=True, exist_ok=True)
        if any(corpus.iterdir()):
            return
        for i, (backend, name) in enumerate(TARGETS):
            if backend in self.seeds and self.target in (None, i):
                content = self.seeds[backend][name]
                if name == "manifest.json":
                    doc = json.loads(content)
                    shutil.rmtree(self.work / "seed", ignore_errors=True)
                    (self.work / "seed").mkdir()
                    for fname, c in self.seeds[backend].items():
                        (self.work / "seed" / fname).write_bytes(c)
                    relist(self.work / "seed", doc)
                    content = b"\x00" + json.dumps(doc).encode()  # second byte 0: re-made checksums
                (corpus / f"seed-{i}").write_bytes(content if self.target is not None else bytes([i]) + content)

    def __call__(self, data: bytes) -> None:
        if self.target is not None:
            data = bytes([self.target]) + (b"\x00" if TARGETS[self.target][1] == "manifest.json" else b"") + data
        if data and write_bundle(self.work / "bundle", self.seeds, data):
            target = "/".join(TARGETS[data[0] % len(TARGETS)])
            self.outcomes[f"{target}: {load_and_predict(self.work / 'bundle')}"] += 1
            if self.report_every and sum(self.outcomes.values()) % self.report_every == 0:
                self.report()

    def report(self) -> None:
        total = sum(self.outcomes.values())
        print(f"fuzz_load: {total} bundles through runtimes.load/run/predict, each answered or refused with a typed error:", file=sys.stderr)
        for what, n in sorted(self.outcomes.items()):
            print(f"  {n:7d}  {what}", file=sys.stderr)
        sys.stderr.flush()


if __name__ == "__main__":
    import atheris

    with atheris.instrument_imports():
        import runtimes  # noqa: F401  (instrumented for coverage feedback)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    only = os.environ.get("FUZZ_LOAD_TARGET")  # 0..3: one file only (see the module docstring)
    harness = Harness(report_every=1000, target=int(only) if only else None)
    corpora = [a for a in sys.argv[1:] if not a.startswith("-")]
    if corpora:
        harness.seed_corpus(Path(corpora[0]))
    atheris.Setup(sys.argv, harness)
    atheris.Fuzz()
