"""int8 bundles of a quantisation-aware run (`edge-transfer qat`): the QDQ graph torch.onnx wrote from the
fake-quantised model is already int8, with the scales training learned, so every int8 format takes it as it is.

- onnx-int8: the QDQ graph (ONNX Runtime fuses it into int8 kernels);
- openvino-int8: the same graph read by OpenVINO (QuantizeLinear/DequantizeLinear become FakeQuantize), saved as IR;
- tensorrt-int8: the same graph for TensorRT's explicit quantisation (symmetric, zero points of 0).

No calibration runs. The gate judges each bundle against the *fp32* parent (what the user compares int8 with) and
records how closely it matches the fake-quantised torch model (what it was trained as).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runtimes.errors import InputError

if TYPE_CHECKING:
    from runtimes.predictor import Predictor

    from .formats import Built, ExportJob, FormatSpec
    from .validate import ReferenceData

QUANTISATION_AWARE = "quantisation-aware"
QAT_FORMATS = ("onnx-int8", "openvino-int8", "tensorrt-int8")
_RECORDED = ("parent", "epochs", "epochs_run", "lr", "scales_move_for", "seven_bit_weights", "calibration", "scheme", "scales", "seconds")


@dataclass
class QatSource:
    """A quantisation-aware run being exported: its `qat` record and, when its parent run could be loaded, the
    parent's fp32 model (export_bundles fills in its logits on the validation images and its ONNX graph, the
    baseline of the speed-up column)."""

    record: dict[str, Any]
    fp32_model: Any = None  # torch.nn.Module | None
    fp32_logits: np.ndarray | None = None
    fp32_onnx: Path | None = None

    def check_formats(self, names: list[str], target_cpu: str) -> None:
        """Refuse what a QAT run cannot give: float formats, and int8 for another CPU than it was trained for."""
        from runtimes.cpu import DEFAULT_TARGET_CPU

        trained_for = (self.record.get("target_cpu") or {}).get("name", DEFAULT_TARGET_CPU)
        if target_cpu not in (DEFAULT_TARGET_CPU, trained_for):
            raise InputError(
                f"--target-cpu {target_cpu}: this quantisation-aware run learned its weights for {trained_for}; "
                f"run qat again with --target-cpu {target_cpu}"
            )
        other = [n for n in names if n not in QAT_FORMATS]
        if other:
            raise InputError(
                f"a quantisation-aware run exports int8 formats only ({', '.join(QAT_FORMATS)}), not {', '.join(other)}: "
                f"export its parent run ({self.record.get('parent')}) for those"
            )

    def gate_reference(self, qat_logits: np.ndarray) -> np.ndarray:
        """What the gate compares the bundle with: the fp32 parent where known, else the fake-quantised model."""
        return self.fp32_logits if self.fp32_logits is not None else qat_logits

    def fidelity(self, predictor: Predictor, qat_logits: np.ndarray, data: ReferenceData) -> dict[str, Any]:
        """How closely the bundle runs the fake-quantised torch model it was trained as."""
        from .validate import compare

        v = compare(predictor, qat_logits, data, min_agreement=None, max_drop=None)
        out = {
            "judged_against": "fp32 parent run" if self.fp32_logits is not None else "the fake-quantised torch model (the fp32 parent was not found)",
            "qat_torch_accuracy": v["torch_accuracy"],
            "agreement_with_qat_torch": v["top1_agreement"],
            "max_abs_logit_diff_vs_qat_torch": v["max_abs_logit_diff"],
        }
        if self.fp32_logits is not None and data.targets is not None:
            out["fp32_accuracy"] = float((self.fp32_logits.argmax(1) == data.targets).mean())
        return out


def build_from_qdq(job: ExportJob, spec: FormatSpec, out_dir: Path) -> Built:
    """Write `spec`'s model files from the run's QDQ graph (`job.base_onnx`)."""
    assert job.qat is not None
    record = job.qat.record
    conversion: dict[str, Any] = {
        "tool": "quantisation-aware training (torch.ao fake quantisation), QDQ ONNX written by torch.onnx",
        "quantisation_aware": {k: record[k] for k in _RECORDED if k in record},
    }
    target = out_dir / spec.entrypoint
    extra: dict[str, Any] = {}
    if spec.backend == "openvino":
        from . import openvino_convert as ovc

        conversion.update(ovc.save_ir(ovc.read_onnx(job.base_onnx), out_dir, fp16=False), weights="int8")
    else:
        shutil.copyfile(job.base_onnx, target)
    if spec.backend == "tensorrt":
        conversion["engine"] = job.tensorrt.build_settings(job.batch_size, spec.precision).to_dict()
    else:
        conversion["target_cpu"] = record.get("target_cpu")
    return conversion, None, extra


def store_int8_weights(path: Path) -> int:
    """Replace each QuantizeLinear of a constant (the weights torch.onnx writes as float, quantised at every call)
    by the int8 tensor it computes, as ONNX Runtime's own quantiser stores weights; returns how many."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    folded, keep = 0, []
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or not all(name in inits for name in node.input if name):
            keep.append(node)
            continue
        w, scale = numpy_helper.to_array(inits[node.input[0]]), numpy_helper.to_array(inits[node.input[1]])
        zp = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * w.ndim
        if scale.ndim == 1 and scale.size > 1:
            shape[axis % w.ndim] = scale.size
        info = np.iinfo(zp.dtype)
        q = np.clip(np.rint(w / scale.reshape(shape)) + zp.astype(np.int64).reshape(shape if zp.size > 1 else ()), info.min, info.max)
        graph.initializer.append(numpy_helper.from_array(q.astype(zp.dtype), node.output[0]))
        folded += 1
    del graph.node[:]
    graph.node.extend(keep)
    used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return folded


def fold_pads_into_convs(path: Path) -> int:
    """Move each zero Pad that feeds a Conv (directly or through its QuantizeLinear/DequantizeLinear pair) into the
    Conv's own `pads`, so that the quantised tensor is the Conv's input and runtimes fuse the pair into the Conv
    (OpenVINO otherwise runs those quantisers on their own). Padding with zeros commutes with symmetric
    quantisation, so the results do not change. Returns how many Pads were folded."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    proto = onnx.load(str(path))
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    pads = [n for n in graph.node if n.op_type == "Pad" and not any(a.name == "mode" and a.s not in (b"", b"constant") for a in n.attribute)]
    computed = [n.input[1] for n in pads if n.input[1] not in inits]
    if computed:  # torch.onnx computes F.pad's amounts from constants at run time: evaluate them once
        probe = onnx.ModelProto()
        probe.CopyFrom(proto)
        probe.graph.output.extend(helper.make_tensor_value_info(name, onnx.TensorProto.INT64, None) for name in computed)
        feeds = {}
        for i in probe.graph.input:
            if i.name in inits:
                continue
            shape = [d.dim_value or 1 for d in i.type.tensor_type.shape.dim]
            feeds[i.name] = np.zeros(shape, onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type))
        session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        values = dict(zip(computed, session.run(computed, feeds), strict=True))
    folded = 0
    for pad in pads:
        amounts = numpy_helper.to_array(inits[pad.input[1]]) if pad.input[1] in inits else values[pad.input[1]]
        zero = len(pad.input) < 3 or not pad.input[2] or (pad.input[2] in inits and not numpy_helper.to_array(inits[pad.input[2]]).any())
        chain, node = [pad], pad
        while zero and len(consumers.get(node.output[0], [])) == 1 and node.op_type != "Conv":
            node = consumers[node.output[0]][0]
            chain.append(node)
            if node.op_type not in ("QuantizeLinear", "DequantizeLinear", "Conv"):
                break
        conv = chain[-1]
        if not zero or conv.op_type != "Conv" or len(amounts) != 8 or amounts[[0, 1, 4, 5]].any() or conv.input[0] != chain[-2].output[0]:
            continue
        attrs = {a.name: a for a in conv.attribute}
        if "auto_pad" in attrs and attrs["auto_pad"].s not in (b"", b"NOTSET"):
            continue
        before = list(attrs["pads"].ints) if "pads" in attrs else [0, 0, 0, 0]
        new = [before[0] + int(amounts[2]), before[1] + int(amounts[3]), before[2] + int(amounts[6]), before[3] + int(amounts[7])]
        for a in list(conv.attribute):
            if a.name == "pads":
                conv.attribute.remove(a)
        conv.attribute.append(helper.make_attribute("pads", new))
        chain[1].input[0] = pad.input[0]  # the node after the Pad now reads the unpadded tensor
        graph.node.remove(pad)
        folded += 1
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return folded
