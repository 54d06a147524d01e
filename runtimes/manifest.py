"""manifest.json: the versioned description of a bundle (README: The bundle), parsed without any host package.

`parse_manifest` checks every field the runtime relies on and names the field at fault; the other sections
(`producer`, `source`, `validation`, `calibration`, `model.conversion`) are carried as plain dicts for people and
tools to read. `Manifest.to_dict` is its inverse: every writer (the export, the engine bundle) builds a `Manifest`
and `BundleWriter` writes `to_dict()`, so what is written is what is read.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

from .errors import BundleError, InputError
from .modality import TEXT_INPUT_NAMES, TextConfig
from .open_set import check_open_set
from .preprocess import PreprocessConfig

SCHEMA_VERSION = 4  # the newest this runtime reads; 2 added embedding bundles, 3 extensible classifiers, 4 text
CLASSIFIER_SCHEMA_VERSION = 1  # classifier bundles are written as 1, which every runtime reads
EMBEDDING_SCHEMA_VERSION = 2
EXTENSIBLE_SCHEMA_VERSION = 3  # a classifier with a second output (its features) and replay data for imprinting
TEXT_SCHEMA_VERSION = 4  # any bundle of the text modality (a `text` section, token inputs): older runtimes refuse it
NORMALIZATIONS = ("l2",)
MANIFEST_NAME = "manifest.json"
BACKENDS = ("onnxruntime", "openvino", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
DTYPES = ("uint8", "float16", "float32", "int64")
MAX_BATCH = 4096  # a fixed batch larger than this is refused as malformed (predict/run chunk to it)


@dataclass(frozen=True)
class FileEntry:
    path: str
    sha256: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "bytes": self.bytes}


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output. `shape` holds ints and symbolic names (e.g. "batch")."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    layout: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.layout:
            d["layout"] = self.layout
        return d


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    created: str
    backend: str
    precision: str
    format: str
    entrypoint: str
    files: tuple[FileEntry, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    preprocessing: PreprocessConfig | None  # an image bundle's; None for text (its `text` section says how)
    labels: tuple[str, ...]
    producer: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    export_format: str | None = None  # the `--format` that made it (e.g. "onnx-int8"); None in old bundles
    target_cpu: dict[str, Any] | None = None  # int8: {"name", "reduce_range", ...} (runtimes.cpu)
    tensorrt: dict[str, Any] | None = None  # tensorrt backend: the engine build settings (runtimes.engines.tensorrt_engine)
    built_on: dict[str, Any] | None = None  # a tensorrt-engine bundle: where its engine was built
    built_from: dict[str, Any] | None = None  # a tensorrt-engine bundle: the ONNX it was built from (path, sha256)
    conversion: Any = None  # how the model files were made (tool, settings); informational, carried as written
    rows_per_call: int | None = None  # run at most this many rows per call (1: activations quantised per call, so
    # a row's answer would depend on the other rows of its batch); None: any batch
    self_test: dict[str, Any] | None = None  # golden images and tolerances (runtimes.selftest)
    embedding: dict[str, Any] | None = None  # an embedding bundle: {"dim", "normalization", "layers", "unknown_threshold"}
    open_set: dict[str, Any] | None = None  # a classifier: {"min_score", ...} calibrated at export (runtimes.open_set)
    extension: dict[str, Any] | None = None  # an extensible classifier: {"features_output", "dim", "replay", ...}
    text: TextConfig | None = None  # a text bundle: its tokenizer file and token limit (runtimes.modality)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def modality(self) -> str:
        """What the bundle takes: "image" or "text" (`runtimes.modality.input_reader` picks the reader by it)."""
        return "text" if self.text is not None else "image"

    @property
    def output_width(self) -> int:
        """Values per image: the embedding's dimension, or one logit per label."""
        return int(self.embedding["dim"]) if self.embedding is not None else len(self.labels)

    def input_fingerprint(self) -> dict[str, Any]:
        """What defines the model's input, for fingerprints (galleries, added classes): an image bundle's
        preprocessing, or a text bundle's text section with its tokenizer's sha256."""
        if self.text is not None:
            digest = next((f.sha256 for f in self.files if f.path == self.text.tokenizer), None)
            return {"text": self.text.to_dict(), "tokenizer_sha256": digest}
        assert self.preprocessing is not None
        return {"preprocessing": self.preprocessing.to_dict()}

    def input_summary(self) -> str:
        """One line on how inputs are made (`inspect`)."""
        if self.text is not None:
            return f"text, tokenised by {self.text.tokenizer}, cut at {self.text.max_tokens} tokens, each batch padded to its longest"
        assert self.preprocessing is not None
        p = self.preprocessing
        return (
            f"{p.input_size[0]}x{p.input_size[1]} {p.interpolation} ({p.resize}), crop {p.crop_pct}, mean {p.mean}, std {p.std}, "
            f"in graph: {p.normalize_in_graph}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The manifest.json document (the inverse of `parse_manifest`); optional sections appear when set."""
        model: dict[str, Any] = {"backend": self.backend, "format": self.format, "precision": self.precision, "entrypoint": self.entrypoint}
        optional = {
            "export_format": self.export_format,
            "conversion": self.conversion,
            "target_cpu": self.target_cpu,
            "tensorrt": self.tensorrt,
            "built_on": self.built_on,
            "built_from": self.built_from,
            "rows_per_call": self.rows_per_call,
        }
        model.update({k: v for k, v in optional.items() if v is not None})
        model["files"] = [f.to_dict() for f in self.files]
        doc: dict[str, Any] = {
            "schema_version": self.schema_version,
            "created": self.created,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            **({"preprocessing": self.preprocessing.to_dict()} if self.preprocessing is not None else {}),
            **({"modality": "text", "text": self.text.to_dict()} if self.text is not None else {}),
            "labels": list(self.labels),
            "source": self.source,
            "validation": self.validation,
            "calibration": self.calibration,
            "producer": self.producer,
            "model": model,
        }
        if self.self_test is not None:
            doc["self_test"] = self.self_test
        if self.embedding is not None:
            doc["embedding"] = self.embedding
        if self.extension is not None:
            doc["extension"] = self.extension
        if self.open_set is not None:
            doc["open_set"] = self.open_set
        return doc


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# ------------------------------------------------------------------------------------------------ parsing


def _req(d: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(d, dict):
        raise BundleError(f"manifest field '{where}' must be an object, got {type(d).__name__}")
    if key not in d:
        raise BundleError(f"manifest is missing field '{where}.{key}'" if where else f"manifest is missing field '{key}'")
    value = d[key]
    if isinstance(value, bool) and bool not in (typ if isinstance(typ, tuple) else (typ,)):
        raise BundleError(f"manifest field '{_path(where, key)}' must be {_tname(typ)}, got a boolean")
    if not isinstance(value, typ):
        raise BundleError(f"manifest field '{_path(where, key)}' must be {_tname(typ)}, got {type(value).__name__}")
    return value


def _path(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _tname(typ: type | tuple[type, ...]) -> str:
    types = typ if isinstance(typ, tuple) else (typ,)
    names = {str: "a string", int: "an integer", list: "a list", dict: "an object", float: "a number", bool: "a boolean"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _opt_dict(d: dict[str, Any], key: str, where: str = "") -> dict[str, Any] | None:
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BundleError(f"manifest field '{_path(where, key)}' must be an object or null, got {type(value).__name__}")
    return value


def _tensor(d: Any, where: str) -> TensorSpec:
    if not isinstance(d, dict):
        raise BundleError(f"manifest field '{where}' must be an object, got {type(d).__name__}")
    name = _req(d, "name", str, where)
    dtype = _req(d, "dtype", str, where)
    if dtype not in DTYPES:
        raise BundleError(f"manifest field '{where}.dtype' must be one of {', '.join(DTYPES)}, got {dtype!r}")
    shape = _req(d, "shape", list, where)
    for i, dim in enumerate(shape):
        ok = (isinstance(dim, int) and not isinstance(dim, bool) and dim > 0) or (isinstance(dim, str) and dim)
        if not ok:
            raise BundleError(f"manifest field '{where}.shape[{i}]' must be a positive int or a symbolic name, got {dim!r}")
    layout = d.get("layout")
    if layout is not None and not isinstance(layout, str):
        raise BundleError(f"manifest field '{where}.layout' must be a string, got {type(layout).__name__}")
    return TensorSpec(name=name, dtype=dtype, shape=tuple(shape), layout=layout)


def _embedding(d: dict[str, Any]) -> dict[str, Any] | None:
    """The `embedding` section of an embedding bundle (its output is one L2-normalised vector per image)."""
    e = _opt_dict(d, "embedding")
    if e is None:
        return None
    dim = _req(e, "dim", int, "embedding")
    if dim < 1:
        raise BundleError(f"manifest field 'embedding.dim' must be >= 1, got {dim}")
    norm = _req(e, "normalization", str, "embedding")
    if norm not in NORMALIZATIONS:
        raise BundleError(f"manifest field 'embedding.normalization' must be one of {', '.join(NORMALIZATIONS)}, got {norm!r}")
    threshold = e.get("unknown_threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not -1.0 <= threshold <= 1.0):
        raise BundleError(f"manifest field 'embedding.unknown_threshold' must be a cosine similarity in [-1, 1] or null, got {threshold!r}")
    layers = e.get("layers", [])
    if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
        raise BundleError("manifest field 'embedding.layers' must be a list of layer names")
    return e


def _extension(d: dict[str, Any], outputs: tuple[TensorSpec, ...], paths: list[str]) -> dict[str, Any] | None:
    """The `extension` section of an extensible classifier: its second output holds the features its head reads,
    and `replay` (a listed file) holds the head and held-out features, so a device can add classes (`runtimes.imprint`)."""
    x = _opt_dict(d, "extension")
    if x is None:
        return None
    dim = _req(x, "dim", int, "extension")
    name = _req(x, "features_output", str, "extension")
    replay = _req(x, "replay", str, "extension")
    if dim < 1:
        raise BundleError(f"manifest field 'extension.dim' must be >= 1, got {dim}")
    if len(outputs) != 2 or outputs[1].name != name:
        raise BundleError(f"manifest field 'outputs' must list the logits, then '{name}' (extension.features_output)")
    shape = outputs[1].shape
    if len(shape) != 2 or shape[1] != dim:
        raise BundleError(f"manifest field 'outputs[1].shape' {list(shape)} must be (batch, {dim}) to match 'extension.dim'")
    if replay not in paths:
        raise BundleError(f"manifest field 'extension.replay' ({replay!r}) is not one of model.files")
    return x


def _image_input(d: dict[str, Any], inputs: tuple[TensorSpec, ...]) -> PreprocessConfig:
    """An image bundle's input: one uint8 (batch, H, W, 3) tensor and the preprocessing that makes it."""
    if len(inputs) != 1:
        raise BundleError(f"manifest must describe exactly one input for an image bundle, got {len(inputs)}")
    spec = inputs[0]
    if spec.dtype != "uint8" or len(spec.shape) != 4 or spec.shape[3] != 3:
        raise BundleError(f"manifest field 'inputs[0]' must be uint8 (batch, H, W, 3), got {spec.dtype} {list(spec.shape)}")
    if isinstance(spec.shape[0], int) and spec.shape[0] > MAX_BATCH:
        raise BundleError(f"manifest field 'inputs[0].shape[0]': a fixed batch of {spec.shape[0]} (at most {MAX_BATCH})")
    try:
        pre = PreprocessConfig.from_dict(_req(d, "preprocessing", dict, ""))
    except (InputError, TypeError, ValueError, KeyError, OverflowError) as exc:
        raise BundleError(f"manifest field 'preprocessing': {exc}") from None
    if tuple(spec.shape[1:3]) != pre.input_size:
        raise BundleError(f"manifest field 'inputs[0].shape' {list(spec.shape)} disagrees with preprocessing.input_size {list(pre.input_size)}")
    return pre


def _text_input(d: dict[str, Any], version: int, inputs: tuple[TensorSpec, ...], paths: list[str]) -> TextConfig:
    """A text bundle's inputs: input_ids and attention_mask, int64 (batch, tokens), and its listed tokenizer."""
    if version < TEXT_SCHEMA_VERSION:
        raise BundleError(f"manifest: a text bundle needs schema_version >= {TEXT_SCHEMA_VERSION}, got {version}")
    try:
        text = TextConfig.from_dict(_req(d, "text", dict, ""))
    except InputError as exc:
        raise BundleError(f"manifest field 'text': {exc}") from None
    if [t.name for t in inputs] != list(TEXT_INPUT_NAMES):
        raise BundleError(f"manifest field 'inputs' must be {', '.join(TEXT_INPUT_NAMES)} for a text bundle, got {[t.name for t in inputs]}")
    for i, spec in enumerate(inputs):
        if spec.dtype != "int64" or len(spec.shape) != 2:
            raise BundleError(f"manifest field 'inputs[{i}]' must be int64 (batch, tokens), got {spec.dtype} {list(spec.shape)}")
        if isinstance(spec.shape[0], int) and spec.shape[0] > MAX_BATCH:
            raise BundleError(f"manifest field 'inputs[{i}].shape[0]': a fixed batch of {spec.shape[0]} (at most {MAX_BATCH})")
    if text.tokenizer not in paths:
        raise BundleError(f"manifest field 'text.tokenizer' ({text.tokenizer!r}) is not one of model.files")
    if d.get("preprocessing") is not None:
        raise BundleError("manifest: a text bundle has no image 'preprocessing' section")
    return text


def parse_manifest(d: Any) -> Manifest:
    """Validate a decoded manifest.json and return a `Manifest`; raise `BundleError` naming the field at fault."""
    if not isinstance(d, dict):
        raise BundleError(f"manifest must be a JSON object, got {type(d).__name__}")
    version = _req(d, "schema_version", int, "")
    if version > SCHEMA_VERSION:
        raise BundleError(
            f"manifest schema_version {version} is newer than this runtime supports ({SCHEMA_VERSION}); upgrade edge-transfer on this device"
        )
    if version < 1:
        raise BundleError(f"manifest schema_version must be >= 1, got {version}")
    created = _req(d, "created", str, "")
    model = _req(d, "model", dict, "")
    backend = _req(model, "backend", str, "model")
    if backend not in BACKENDS:
        raise BundleError(f"manifest field 'model.backend' must be one of {', '.join(BACKENDS)}, got {backend!r}")
    precision = _req(model, "precision", str, "model")
    if precision not in PRECISIONS:
        raise BundleError(f"manifest field 'model.precision' must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    fmt = _req(model, "format", str, "model")
    entrypoint = _req(model, "entrypoint", str, "model")
    files_raw = _req(model, "files", list, "model")
    if not files_raw:
        raise BundleError("manifest field 'model.files' must list at least one file")
    files = []
    for i, f in enumerate(files_raw):
        where = f"model.files[{i}]"
        if not isinstance(f, dict):
            raise BundleError(f"manifest field '{where}' must be an object, got {type(f).__name__}")
        sha = _req(f, "sha256", str, where)
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise BundleError(f"manifest field '{where}.sha256' must be 64 lowercase hex digits")
        size = _req(f, "bytes", int, where)
        if size < 0:
            raise BundleError(f"manifest field '{where}.bytes' must be >= 0, got {size}")
        files.append(FileEntry(path=_req(f, "path", str, where), sha256=sha, bytes=size))
    paths = [f.path for f in files]
    if len(set(paths)) != len(paths):
        raise BundleError("manifest field 'model.files' lists a path twice")
    if entrypoint not in paths:
        raise BundleError(f"manifest field 'model.entrypoint' ({entrypoint!r}) is not one of model.files")
    inputs = tuple(_tensor(t, f"inputs[{i}]") for i, t in enumerate(_req(d, "inputs", list, "")))
    outputs = tuple(_tensor(t, f"outputs[{i}]") for i, t in enumerate(_req(d, "outputs", list, "")))
    extension = _extension(d, outputs, paths)
    if len(outputs) != (1 if extension is None else 2):
        raise BundleError(f"manifest must describe exactly one output (two with an 'extension' section), got {len(outputs)}")
    modality = d.get("modality", "image")
    if modality not in ("image", "text"):
        raise BundleError(f"manifest field 'modality' must be 'image' or 'text', got {modality!r}")
    pre, text = (None, _text_input(d, version, inputs, paths)) if modality == "text" else (_image_input(d, inputs), None)
    labels = _req(d, "labels", list, "")
    embedding = _embedding(d)
    if not all(isinstance(x, str) for x in labels) or (not labels and embedding is None):
        raise BundleError("manifest field 'labels' must be a non-empty list of strings")
    if embedding is not None and extension is not None:
        raise BundleError("manifest has both 'embedding' and 'extension': an embedding bundle has no classes to extend")
    out_shape = outputs[0].shape
    if embedding is not None and (len(out_shape) != 2 or out_shape[1] != embedding["dim"]):
        raise BundleError(f"manifest field 'outputs[0].shape' {list(out_shape)} must be (batch, {embedding['dim']}) to match 'embedding.dim'")
    if embedding is None and (len(out_shape) != 2 or out_shape[1] != len(labels)):
        raise BundleError(f"manifest field 'outputs[0].shape' {list(out_shape)} must be (batch, {len(labels)}) to match 'labels'")
    producer = _opt_dict(d, "producer") or {}
    source = _opt_dict(d, "source") or {}
    export_format = model.get("export_format")
    if export_format is not None and not isinstance(export_format, str):
        raise BundleError(f"manifest field 'model.export_format' must be a string, got {type(export_format).__name__}")
    target_cpu = _opt_dict(model, "target_cpu", "model")
    if target_cpu is not None and (not isinstance(target_cpu.get("name"), str) or not isinstance(target_cpu.get("reduce_range"), bool)):
        raise BundleError("manifest field 'model.target_cpu' must hold 'name' (a string) and 'reduce_range' (a boolean)")
    tensorrt, built_on = _opt_dict(model, "tensorrt", "model"), _opt_dict(model, "built_on", "model")
    built_from = _opt_dict(model, "built_from", "model")
    if backend == "tensorrt" and tensorrt is None:
        raise BundleError("manifest field 'model.tensorrt' (the engine build settings) is missing")
    rows_per_call = model.get("rows_per_call")
    if rows_per_call is not None and (isinstance(rows_per_call, bool) or not isinstance(rows_per_call, int) or not 1 <= rows_per_call <= MAX_BATCH):
        raise BundleError(f"manifest field 'model.rows_per_call' must be a whole number from 1 to {MAX_BATCH}, got {rows_per_call!r}")
    if fmt == "tensorrt-engine" and built_on is None:
        raise BundleError("manifest field 'model.built_on' (TensorRT version and GPU) is missing")
    return Manifest(
        schema_version=version,
        created=created,
        backend=backend,
        precision=precision,
        format=fmt,
        entrypoint=entrypoint,
        files=tuple(files),
        inputs=inputs,
        outputs=outputs,
        preprocessing=pre,
        text=text,
        labels=tuple(labels),
        producer=producer,
        source=source,
        validation=_opt_dict(d, "validation"),
        calibration=_opt_dict(d, "calibration"),
        export_format=export_format,
        target_cpu=target_cpu,
        tensorrt=tensorrt,
        built_on=built_on,
        built_from=built_from,
        conversion=model.get("conversion"),
        rows_per_call=rows_per_call,
        self_test=_opt_dict(d, "self_test"),
        embedding=embedding,
        extension=extension,
        open_set=check_open_set(d.get("open_set")),
        raw=d,
    )
