"""Try every bad input we guard against and print what the user sees, as a Markdown table (for README.md).

    python scripts/reliability_table.py BUNDLE [RUN]  # BUNDLE: any ONNX bundle, e.g. demo-output/bundle; RUN: its run

Each row runs the real code path (runtimes.load / predict / run, or the training data loader) on a temporary copy
and reports the error type and its one-line message, and whether the original files were left untouched.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

import runtimes  # noqa: E402
from runtimes.errors import EdgeTransferError  # noqa: E402
from runtimes.fsutil import TEMP_PREFIX, remove_temporary  # noqa: E402


def digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(path).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def outcome(fn) -> str:
    try:
        fn()
    except EdgeTransferError as exc:
        return f"`{type(exc).__name__}`: {str(exc).splitlines()[0]}"
    except Exception as exc:  # noqa: BLE001 - a row that shows this is a bug to fix
        return f"UNTYPED {type(exc).__name__}: {exc}"
    return "accepted"


def crafted_bundle_rows(bundle: Path, work: Path, p) -> list[tuple[str, str]]:
    """Bundles whose checksums are consistent but whose model or manifest is wrong (tests/crafted.py builds them)."""
    import onnx
    from onnx import TensorProto, helper

    from crafted import bundle_with_model, edit_manifest, labels, model_with_external_tensor, relist, toy_model

    h = p.preprocessing.input_size[0]
    n = 0

    def fresh(model=None) -> Path:
        nonlocal n
        n += 1
        if model is None:
            dst = work / f"crafted-{n}"
            shutil.copytree(bundle, dst)
            return relist(dst)
        return bundle_with_model(bundle, work / f"crafted-{n}", model)

    rows = []
    two_out, w = toy_model(outputs=("features", "logits"), size=h)
    img = np.random.default_rng(1).integers(0, 255, (h, h, 3), dtype=np.uint8)
    expected = int(np.argmax(img.reshape(-1, 3).astype(np.float64).mean(0) @ w))
    with runtimes.load(fresh(two_out)) as q:
        got = q.predict(img, top_k=1)[0][0].index
    rows.append(
        (
            "model with outputs `features` then `logits`, the manifest names `logits`",
            "accepted: outputs are bound by name; the answer is the logits' class" if got == expected else f"WRONG class {got}",
        )
    )
    for count in (20, 5):
        names = [f"c{i}" for i in range(count)]
        rows.append((f"{count} labels for a 10-output model", outcome(lambda names=names: runtimes.load(labels(fresh(toy_model(size=h)[0]), names)))))
    float_input = toy_model(in_type=TensorProto.FLOAT, size=h)[0]
    rows.append(("float32 model input, the manifest says uint8", outcome(lambda: runtimes.load(fresh(float_input)))))

    def nan_logits():
        with runtimes.load(fresh(toy_model(nan=True, size=h)[0])) as q:
            q.predict(img)

    rows.append(("a model that outputs NaN logits, to predict()", outcome(nan_logits)))

    def empty():
        b = fresh()
        (b / "model.onnx").write_bytes(b"")
        runtimes.load(relist(b))

    rows.append(("empty model.onnx", outcome(empty)))
    custom, _ = toy_model(size=h)
    custom.graph.node[2].domain = "com.example.custom"
    custom.opset_import.append(helper.make_opsetid("com.example.custom", 1))
    rows.append(("an operator from an unknown custom domain", outcome(lambda: runtimes.load(fresh(custom)))))

    def smaller(d: dict) -> None:
        d["preprocessing"].update(input_size=[32, 32])
        d["inputs"][0].update(shape=["batch", 32, 32, 3])

    rows.append(
        ("manifest input size 32, graph input size " + str(h), outcome(lambda: runtimes.load(edit_manifest(fresh(toy_model(size=h)[0]), smaller))))
    )

    def renamed_entrypoint():
        b = fresh()
        (b / "model.onnx").unlink()
        onnx.save(model_with_external_tensor("/etc/passwd"), str(b / "model.ONNX"))
        runtimes.load(edit_manifest(relist(b), lambda d: d["model"].update(entrypoint="model.ONNX")))

    rows.append(("entrypoint `model.ONNX` whose external data is /etc/passwd", outcome(renamed_entrypoint)))

    def non_utf8_path():
        b = fresh()
        runtimes.load(edit_manifest(b, lambda d: d["model"]["files"].append({"path": "x\udcff.bin", "sha256": "0" * 64, "bytes": 1})))

    rows.append(("manifest path that is not valid UTF-8", outcome(non_utf8_path)))

    def manifest_text(change) -> None:
        b = fresh()
        text = json.dumps(json.loads((b / "manifest.json").read_text()))
        (b / "manifest.json").write_text(change(text))
        runtimes.load(b)

    limits = {
        "manifest JSON nested 1,000 deep": lambda t: t.rstrip()[:-1] + ', "x": ' + "[" * 1000 + "]" * 1000 + "}",
        "manifest integer of 5,000 digits": lambda t: t.replace('"schema_version": 1', '"schema_version": ' + "9" * 5000),
        'manifest `crop_pct` as the string "1"': lambda t: t.replace('"crop_pct": 1.0', '"crop_pct": "1"'),
        "manifest input size 100000 x 100000": lambda t: t.replace(f"{h}, {h}", "100000, 100000"),
        "manifest fixed batch of 10^12": lambda t: t.replace(f'"batch", {h}', f"1000000000000, {h}", 1),
    }
    for what, change in limits.items():
        rows.append((what, outcome(lambda change=change: manifest_text(change))))

    def openvino_offset_past_the_end():
        import openvino as ov

        b = fresh()
        ov.save_model(ov.convert_model(str(b / "model.onnx")), str(b / "model.xml"), compress_to_fp16=False)
        (b / "model.onnx").unlink()
        xml = (b / "model.xml").read_text()
        (b / "model.xml").write_text(xml.replace('offset="0"', 'offset="999999999"', 1))
        runtimes.load(edit_manifest(relist(b), lambda d: d["model"].update(backend="openvino", format="openvino", entrypoint="model.xml")))

    try:
        import openvino  # noqa: F401

        rows.append(("OpenVINO IR whose weight offset is past the end of model.bin", outcome(openvino_offset_past_the_end)))
    except ImportError:
        pass
    return rows


def image_rows(work: Path, p) -> list[tuple[str, str]]:
    """Images as users take them, and batches as apps pass them."""
    from PIL import Image

    rows = [("ragged nested list as an image", outcome(lambda: p.predict([[1, 2], [3]])))]
    h, w = p.preprocessing.input_size
    big = np.zeros((1000, h, w, 3), np.uint8)
    chunked = outcome(lambda: p.run(big)) == "accepted"
    rows.append(("1,000-image batch to run()", "accepted: handed to the backend 256 at a time" if chunked else "FAILED"))
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(work / "sideways.jpg", exif=exif)
    from runtimes.preprocess import read_image, to_rgb_uint8

    upright = read_image(str(work / "sideways.jpg")).shape[:2] == (40, 20)
    rows.append(("JPEG stored sideways with EXIF orientation 6", "accepted: turned upright, as in training" if upright else "WRONG: read sideways"))
    Image.fromarray(np.full((8, 8), 0.5, np.float32), mode="F").save(work / "half.tif")
    grey = int(to_rgb_uint8(read_image(str(work / "half.tif"))).max())
    rows.append(("float TIFF of 0.5 everywhere", f"accepted: scaled by its range to grey {grey}"))
    Image.fromarray(np.full((8, 8), 70000, np.int32), mode="I").save(work / "i32.tif")
    rows.append(("32-bit TIFF with values 70000", outcome(lambda: p.predict(str(work / "i32.tif")))))
    Image.new("L", (7000, 7000)).save(work / "bomb.png")
    rows.append(("7000 x 7000 PNG (49 MP)", outcome(lambda: p.predict(str(work / "bomb.png")))))
    return rows


def main() -> int:
    bundle = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "demo-output" / "bundle")
    before = digest(bundle)
    work = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}reliability-"))
    rows = []

    def copy(name: str) -> Path:
        dst = work / name
        shutil.copytree(bundle, dst)
        return dst

    p = runtimes.load(bundle)
    h, w = p.preprocessing.input_size
    good = np.zeros((2, h, w, 3), np.uint8)
    cases = {
        "float32 batch to run()": lambda: p.run(good.astype(np.float32)),
        "1 channel batch to run()": lambda: p.run(good[..., :1]),
        "wrong size batch to run()": lambda: p.run(good[:, : h // 2]),
        "empty batch": lambda: p.run(good[:0]),
        "float image with NaN to predict()": lambda: p.predict(np.full((32, 32, 3), np.nan, np.float32)),
        "float image with inf to predict()": lambda: p.predict(np.full((32, 32, 3), np.inf, np.float32)),
        "0x0 image": lambda: p.predict(np.zeros((0, 0, 3), np.uint8)),
        "1x1 image": lambda: p.predict(np.zeros((1, 1, 3), np.uint8)),
        "grayscale image (H, W)": lambda: p.predict(np.zeros((20, 30), np.uint8)),
        "RGBA image": lambda: p.predict(np.zeros((20, 30, 4), np.uint8)),
        "16-bit image": lambda: p.predict(np.full((20, 30, 3), 40000, np.uint16)),
        "5-channel image": lambda: p.predict(np.zeros((20, 30, 5), np.uint8)),
        "a string instead of an image file": lambda: p.predict("no-such-file.png"),
    }
    accepted_as = {
        "1x1 image": "accepted: resized up to the model's input size",
        "grayscale image (H, W)": "accepted: grey replicated to RGB",
        "RGBA image": "accepted: alpha dropped",
        "16-bit image": "accepted: scaled to 8 bits",
    }
    for what, fn in cases.items():
        got = outcome(fn)
        rows.append((what, accepted_as.get(what, got) if got == "accepted" else got))

    def tamper():
        b = copy("tampered")
        data = bytearray((b / "model.onnx").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (b / "model.onnx").write_bytes(bytes(data))
        runtimes.load(b)

    def truncate():
        b = copy("truncated")
        data = (b / "model.onnx").read_bytes()
        (b / "model.onnx").write_bytes(data[: len(data) // 2])
        runtimes.load(b)

    def unlisted():
        b = copy("unlisted")
        (b / "extra.bin").write_bytes(b"x")
        runtimes.load(b)

    def edited(name: str, change):
        """Load a copy of the bundle whose manifest `change(doc)` altered."""

        def attempt():
            b = copy(name)
            doc = json.loads((b / "manifest.json").read_text())
            change(doc)
            (b / "manifest.json").write_text(json.dumps(doc))
            runtimes.load(b)

        return attempt

    def _traverse(doc):
        doc["model"]["files"][0]["path"] = doc["model"]["entrypoint"] = "../model.onnx"

    traversal = edited("traversal", _traverse)
    newer = edited("newer", lambda doc: doc.update(schema_version=99))
    bad_field = edited("badfield", lambda doc: doc["model"].update(precision="int3"))
    missing_backend = edited("trt", lambda doc: doc["model"].update(backend="tensorrt"))

    def external_data():
        import onnx
        from onnx import TensorProto, helper

        b = copy("external")
        t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2], data_location=TensorProto.EXTERNAL)
        entry = t.external_data.add()
        entry.key, entry.value = "location", "../../../etc/passwd"
        graph = helper.make_graph(
            [helper.make_node("Identity", ["w"], ["y"])], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], initializer=[t]
        )
        onnx.save(helper.make_model(graph), str(b / "model.onnx"))
        doc = json.loads((b / "manifest.json").read_text())
        data = (b / "model.onnx").read_bytes()
        doc["model"]["files"][0].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
        (b / "manifest.json").write_text(json.dumps(doc))
        runtimes.load(b)

    for what, fn in {
        "ONNX external data pointing at ../../../etc/passwd (checksums consistent)": external_data,
        "model file with one byte flipped": tamper,
        "truncated model file": truncate,
        "file in the bundle the manifest does not list": unlisted,
        "manifest path '../model.onnx'": traversal,
        "manifest schema_version 99": newer,
        "manifest precision 'int3'": bad_field,
        "bundle for a backend not installed here": missing_backend,
    }.items():
        rows.append((what, outcome(fn)))

    rows += crafted_bundle_rows(bundle, work, p)
    rows += image_rows(work, p)
    p.close()
    rows.append(("predict() after close()", outcome(lambda: p.predict(good[0]))))

    try:
        from PIL import Image

        from edge_transfer.data import load_dataset

        def folder(name: str, setup) -> Path:
            root = work / name
            for cls in ("cat", "dog"):
                (root / cls).mkdir(parents=True)
                for i in range(3):
                    Image.fromarray(np.full((16, 16, 3), 60 * i, np.uint8)).save(root / cls / f"{i}.png")
            setup(root)
            return root

        def corrupt(root):
            (root / "dog" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")

        def empty_class(root):
            (root / "bird").mkdir()

        def single(root):
            shutil.rmtree(root / "dog")

        def not_image(root):
            (root / "cat" / "notes.txt").write_text("hello")  # not an image extension: ignored

        for what, setup in {
            "dataset with a corrupt JPEG": corrupt,
            "dataset with an empty class folder": empty_class,
            "dataset with a single class": single,
            "dataset with a text file among images": not_image,
        }.items():
            root = folder(what.replace(" ", "_"), setup)
            count = 7 if "corrupt" in what else 6
            got = outcome(lambda root=root, count=count: load_dataset(str(root)).prepared_batch(np.arange(count), p.preprocessing))
            rows.append((what, "accepted: non-image files are ignored (only image extensions are read)" if got == "accepted" else got))
        root = folder("skip", corrupt)
        ds = load_dataset(str(root), skip_bad=True)
        rows.append(("the same corrupt JPEG with `--skip-bad`", f"accepted: {len(ds)} images kept, the bad one skipped with a warning"))
    except ImportError as exc:
        rows.append(("image-folder datasets", f"not run here ({exc})"))

    from reliability_policy import policy_rows
    from reliability_user_files import user_file_rows, wrong_answer_rows

    run = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(str(json.loads((bundle / "manifest.json").read_text())["source"].get("run", "")))
    run_ok = run.is_dir() and (run / "config.json").is_file()
    owned = user_file_rows(work / "owned", run if run_ok else None)
    wrong = wrong_answer_rows(work / "wrong", bundle)
    policy = policy_rows(work / "policy", bundle)

    untouched = digest(bundle) == before
    tables = (("bad input", rows), ("what the user owns", owned), ("answers that would be wrong", wrong), ("outputs, keys and deploys", policy))
    for title, table in tables:
        print(f"| {title} | what the user gets |")
        print("|---|---|")
        for what, got in table:
            shown = got.replace(str(work) + "/", "").replace(str(work), "...").replace("|", "/").replace("\n", " ")
            print(f"| {what} | {shown} |")
        print()
    print(f"the original bundle is byte-identical afterwards: {untouched}")
    remove_temporary(work)
    every = rows + owned + wrong + policy
    return 0 if untouched and not any(got.startswith(("UNTYPED", "WRONG", "FAILED")) for _, got in every) else 1


if __name__ == "__main__":
    sys.exit(main())
