"""Crafted bundles for the hardening tests and scripts/reliability_table.py: each takes a real bundle as a template,
changes one thing, and re-makes the manifest's sha256 and sizes, as a buggy or hostile producer would."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SMALL = 64  # the side of the toy model's input (the tests' digits bundles are 64 px)


def relist(out: Path) -> Path:
    """List every file of the bundle in its manifest with fresh sha256 and sizes, as a careless producer would."""
    doc = json.loads((out / "manifest.json").read_text())
    doc["model"]["files"] = [
        {"path": p.relative_to(out).as_posix(), "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "bytes": p.stat().st_size}
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    ]
    (out / "manifest.json").write_text(json.dumps(doc))
    return out


def bundle_with_model(template: Path, out: Path, model, extra: dict[str, bytes] | None = None) -> Path:
    """A copy of `template` whose model.onnx is replaced (and extra files added), with a consistent manifest."""
    import onnx

    shutil.copytree(template, out)
    onnx.save(model, str(out / "model.onnx"))
    for name, data in (extra or {}).items():
        (out / name).write_bytes(data)
    return relist(out)


def edit_manifest(bundle: Path, edit: Callable[[dict[str, Any]], Any]) -> Path:
    """Change the manifest in place (`edit(doc)`), leaving the checksums as they are (they cover the model files)."""
    doc = json.loads((bundle / "manifest.json").read_text())
    edit(doc)
    (bundle / "manifest.json").write_text(json.dumps(doc))
    return bundle


def labels(bundle: Path, names: list[str]) -> Path:
    """Give the bundle other labels; the manifest stays self-consistent, so only the model disagrees."""
    doc = json.loads((bundle / "manifest.json").read_text())
    doc["labels"] = names
    doc["outputs"][0]["shape"] = ["batch", len(names)]  # a consistent manifest: only the model disagrees
    (bundle / "manifest.json").write_text(json.dumps(doc))
    return bundle


def toy_model(outputs: tuple[str, ...] = ("logits",), classes: int = 10, in_type: int | None = None, nan: bool = False, size: int = SMALL):
    """uint8 images -> mean colour -> MatMul -> `classes` logits; a 'features' output (argmax 7 everywhere) when asked."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, classes)).astype(np.float32)
    w2 = np.zeros((3, classes), np.float32)
    w2[:, 7] = 100.0
    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0),
        helper.make_node("MatMul", ["m", "w"], ["raw"]),
        helper.make_node("Div" if nan else "Identity", ["raw", "zero"] if nan else ["raw"], ["logits"]),
        helper.make_node("MatMul", ["m", "w2"], ["features"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(np.zeros((1,), np.float32), "zero"),
    ]
    graph = helper.make_graph(
        nodes,
        "toy",
        [helper.make_tensor_value_info("images", in_type or TensorProto.UINT8, ["batch", size, size, 3])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", classes]) for n in outputs],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model, w


def model_with_external_tensor(location: str, in_attribute: bool = False):
    """A tiny valid graph whose one tensor says its data lives in file `location`."""
    import onnx
    from onnx import TensorProto, helper

    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", "8")):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    if in_attribute:  # hidden in a Constant node's attribute instead of the initializers
        nodes = [helper.make_node("Constant", [], ["w"], value=t)]
        inits = []
    else:
        nodes, inits = [], [t]
    nodes.append(helper.make_node("Identity", ["w"], ["y"]))
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], initializer=inits)
    return onnx.helper.make_model(graph)


def ir_bundle(template: Path, out: Path, onnx_model) -> Path:
    """A copy of an OpenVINO bundle whose IR is `onnx_model` converted by OpenVINO, with a consistent manifest."""
    import onnx
    import openvino as ov

    shutil.copytree(template, out)
    onnx.save(onnx_model, str(out.parent / "toy.onnx"))
    ov.save_model(ov.convert_model(str(out.parent / "toy.onnx")), str(out / "model.xml"), compress_to_fp16=False)
    return relist(out)
