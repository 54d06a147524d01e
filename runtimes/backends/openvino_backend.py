"""OpenVINO backend. Imported lazily by the registry; needs numpy and openvino only."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import openvino as ov

from ..bundle import Bundle
from ..cpu import cpu_features
from ..errors import BackendUnavailableError, BundleError, InferenceError, InputError
from ..fsutil import published_path
from ..graph_types import manifest_dtype
from ..predictor import Predictor

DEVICES = ("cpu", "gpu", "npu", "auto")
HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
# runtimes.load(..., inference_precision=...) -> OpenVINO's INFERENCE_PRECISION_HINT
INFERENCE_PRECISIONS = {"f32": "f32", "fp32": "f32", "f16": "f16", "fp16": "f16", "bf16": "bf16"}
_SHORT = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
log = logging.getLogger(__name__)
# OpenVINO releases whose CPU plugin gives wrong int8 answers on Arm: from 2025.4 it runs int8 convolutions with Arm
# int8 kernels (2025.2 and 2025.3 ran them in f32). Measured on emulated Cortex-A76 and A72 (docs/guides/device.md):
# 2025.4.1 agreed with torch on 6% of a self-test, 2026.4.1 on 94% (A76) or stopped (A72); none is known to be fixed.
ARM_INT8_WRONG_FROM = (2025, 4)
ARM_INT8_RIGHT = "openvino<2025.4"  # what edge-transfer-runtime[openvino] installs on aarch64


def arm_int8_problem(version: str, machine_is_arm: bool, precision: str) -> str | None:
    """Why this OpenVINO must not run an int8 bundle on this CPU, or None."""
    try:
        release = tuple(int(p) for p in version.split("-")[0].split(".")[:2])
    except ValueError:
        release = ARM_INT8_WRONG_FROM  # a version we cannot read: not trusted
    if not (machine_is_arm and precision == "int8" and release >= ARM_INT8_WRONG_FROM):
        return None
    return (
        f"OpenVINO {version.split('-')[0]} gives wrong int8 answers on Arm CPUs (2025.4 to 2026.4 measured wrong or "
        f"failing; 2025.2 and 2025.3 right): install '{ARM_INT8_RIGHT}' (the [openvino] extra does on aarch64), "
        "or run this model's onnx-int8 bundle"
    )


def short_precision(value: Any) -> str:
    """OpenVINO's element type as we name it: <Type: 'bfloat16'> -> 'bf16'."""
    name = manifest_dtype(value)
    return _SHORT.get(name, name)


def validated_precision(manifest: Any) -> str:
    """The inference precision a bundle was validated at (recorded by the export since it was pinned), else f32:
    OpenVINO would otherwise pick bf16 by itself on CPUs with native bf16, a precision nobody validated."""
    v = manifest.validation or {}
    recorded = v.get("inference_precision") if isinstance(v, dict) else None
    return INFERENCE_PRECISIONS.get(str(recorded), "f32") if recorded else "f32"


def _read_model(core: Any, bundle: Bundle) -> Any:
    """The IR from the verified bytes (model.xml and its weights), so what was hashed is what runs."""
    entry = bundle.manifest.entrypoint
    xml = bundle.verified_bytes(entry)
    if xml is None:
        return core.read_model(str(bundle.entrypoint))
    weights = bundle.verified_bytes(entry[: -len(".xml")] + ".bin") if entry.endswith(".xml") else None
    return core.read_model(model=xml, weights=weights if weights is not None else b"")


class OpenVinoPredictor(Predictor):
    """Runs an OpenVINO IR bundle (model.xml + model.bin) with `openvino.Core.compile_model`.

    device: "cpu" (default), "gpu", "npu" or "auto" (OpenVINO picks; the device it picked is reported).
    inference_precision: None (default: the precision the bundle was validated at, f32 unless recorded otherwise) or
    "f32" | "f16" | "bf16" to choose a lower one explicitly. The precision OpenVINO actually uses is read back from
    the compiled model (`inference_precision`, `describe()`).
    hint: "latency" (default) or "throughput" (OpenVINO's PERFORMANCE_HINT). threads: CPU inference threads
    (0 = OpenVINO's default). streams: NUM_STREAMS (default: what the hint picks). A device OpenVINO does not
    see raises `BackendUnavailableError` naming the ones it does; nothing falls back silently. NPUs need static shapes:
    export with a fixed batch for them.
    Calls are concurrent: each thread gets its own infer request.
    """

    backend_name = "openvino"

    def __init__(
        self,
        bundle: Bundle,
        device: str | None = None,
        *,
        hint: str = "latency",
        threads: int = 0,
        streams: int | None = None,
        inference_precision: str | None = None,
        batch_size: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(bundle)
        if options:
            raise InputError(
                f"unknown openvino option(s): {', '.join(sorted(options))} (known: hint, threads, streams, inference_precision, batch_size)"
            )
        self.loaded_batch = batch_size
        if inference_precision is not None and inference_precision not in INFERENCE_PRECISIONS:
            raise InputError(f"inference_precision must be one of f32, f16, bf16, got {inference_precision!r}")
        self.requested_precision = INFERENCE_PRECISIONS[inference_precision] if inference_precision else validated_precision(bundle.manifest)
        if streams is not None and (not isinstance(streams, int) or streams < 1):
            raise InputError(f"openvino streams must be a positive integer, got {streams!r}")
        dev = (device or "cpu").lower()
        if dev not in DEVICES:
            raise InputError(f"openvino device must be one of {', '.join(DEVICES)}, got {device!r}")
        if hint not in HINTS:
            raise InputError(f"openvino hint must be one of {', '.join(HINTS)}, got {hint!r}")
        core = ov.Core()
        available = list(core.available_devices)
        if dev != "auto" and not any(d.split(".")[0] == dev.upper() for d in available):
            raise BackendUnavailableError(
                f"OpenVINO sees no {dev.upper()} device here (available: {', '.join(available) or 'none'}); "
                "use device='cpu' or 'auto', or install the device's driver"
            )
        if dev in ("cpu", "auto") and (problem := arm_int8_problem(ov.__version__, cpu_features().arm64, self.precision)):
            raise BackendUnavailableError(f"{bundle.path}: {problem}")
        if dev == "npu" and self.max_batch is None:
            raise InputError(f"{bundle.path}: NPUs need a static batch; load it with batch_size=N (--batch N), or export it with a fixed batch")
        config: dict[str, Any] = {"PERFORMANCE_HINT": HINTS[hint]}
        if threads and dev == "cpu":
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if streams is not None:
            config["NUM_STREAMS"] = int(streams)
        pin = {"INFERENCE_PRECISION_HINT": self.requested_precision}
        if dev in ("cpu", "gpu"):
            config.update(pin)
        elif dev == "auto":  # AUTO passes per-device properties on to the device it picks
            config["DEVICE_PROPERTIES"] = {d: dict(pin) for d in ("CPU", "GPU") if any(a.split(".")[0] == d for a in available)}
        try:
            model = _read_model(core, bundle)
        except RuntimeError as exc:  # checksums passed, so the producer wrote a broken IR (offsets past the weights...)
            raise BundleError(
                f"{bundle.path}: OpenVINO cannot read the IR {bundle.entrypoint.name}: "
                f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}"
            ) from None
        except UnicodeDecodeError as exc:  # found by tests/fuzz/fuzz_load.py
            raise BundleError(f"{bundle.path}: the IR {bundle.entrypoint.name} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
        if batch_size is not None:  # the dynamic batch made static before compiling (what benchmark_app's -shape does)
            _reshape_batch(model, batch_size)
        try:
            self.compiled = core.compile_model(model, dev.upper(), config)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if dev == "cpu":  # the CPU plugin runs any valid IR: the checksummed files hold a broken model
                raise BundleError(f"{bundle.path}: OpenVINO cannot compile the IR {bundle.entrypoint.name} for CPU: {first}") from None
            raise BackendUnavailableError(f"OpenVINO could not compile {bundle.entrypoint.name} for {dev.upper()}: {exc}") from None

        def ports(items: Any) -> dict[str, tuple[str, tuple[Any, ...]]]:
            return {
                name: (manifest_dtype(port.get_element_type()), tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape()))
                for port in items
                for name in port.get_names()
            }

        try:
            graph_inputs, graph_outputs = ports(self.compiled.inputs), ports(self.compiled.outputs)
        except UnicodeDecodeError as exc:
            raise BundleError(
                f"{bundle.path}: an input or output name in the IR {bundle.entrypoint.name} is not valid UTF-8 ({exc.reason} at byte {exc.start})"
            ) from None
        self.check_graph_io(graph_inputs, graph_outputs)
        self._output = self.compiled.output(self.outputs[0].name)  # by name, never by position
        self.execution_devices = [str(d) for d in self.compiled.get_property("EXECUTION_DEVICES")]
        self._device = dev
        self._hint = hint
        self._local = threading.local()
        self._device_props = self._read_device_properties()
        self.inference_precision = self._read_back("INFERENCE_PRECISION_HINT", short_precision)
        if any(d.split(".")[0] == "CPU" for d in self.execution_devices):
            self._check_int8_target()
        if dev != "npu" and self.inference_precision not in (None, self.requested_precision):
            log.warning(
                "%s: OpenVINO runs at %s although %s was asked for; results may differ from the validated ones",
                published_path(bundle.path),
                self.inference_precision,
                self.requested_precision,
            )

    def _read_device_properties(self) -> dict[str, dict[str, Any]]:
        """name -> the properties this compiled model supports: its own, or, under AUTO, each device's."""
        supported = {str(p) for p in self.compiled.get_property("SUPPORTED_PROPERTIES")}
        if "INFERENCE_PRECISION_HINT" in supported or "DEVICE_PROPERTIES" not in supported:
            props: dict[str, Any] = {}
            for name in ("INFERENCE_PRECISION_HINT", "NUM_STREAMS"):
                if name in supported:
                    props[name] = self.compiled.get_property(name)
            return {"": props}
        per_device = self.compiled.get_property("DEVICE_PROPERTIES")
        return {str(k): dict(v) for k, v in per_device.items() if isinstance(v, dict)} if isinstance(per_device, dict) else {}

    def _read_back(self, name: str, convert: Callable[[Any], Any]) -> Any:
        """A property of the compiled model (or, under AUTO, of the device(s) running it); None where unsupported."""
        values = {dev: convert(p[name]) for dev, p in self._device_props.items() if name in p}
        if not values:
            return None
        distinct = sorted({str(v) for v in values.values()})
        return next(iter(values.values())) if len(distinct) == 1 else ",".join(f"{d}:{v}" for d, v in values.items())

    @property
    def device(self) -> str:
        """The device(s) OpenVINO actually runs on, e.g. 'cpu', or 'auto:CPU' when AUTO chose."""
        actual = ",".join(self.execution_devices)
        return self._device if self._device != "auto" else f"auto:{actual}"

    def describe(self) -> dict[str, Any]:
        return dict(
            super().describe(),
            execution_devices=list(self.execution_devices),
            hint=self._hint,
            streams=self._read_back("NUM_STREAMS", int),
            inference_precision=self.inference_precision,
            requested_precision=self.requested_precision,
            openvino=ov.__version__,
        )

    def _request(self) -> Any:
        """This thread's infer request (created on first use)."""
        request = getattr(self._local, "request", None)
        if request is None:
            compiled = self.compiled
            if compiled is None:
                raise InferenceError(f"{self.bundle.path}: this predictor is closed")
            request = self._local.request = compiled.create_infer_request()
        return request

    def _run_impl(self, batch: Any) -> np.ndarray:
        if self.compiled is None:
            raise InferenceError(f"{self.bundle.path}: this predictor is closed")
        try:
            result = self._request().infer(self.input.feeds(batch))
        except RuntimeError as exc:
            raise InferenceError(f"{self.bundle.path}: OpenVINO failed on a batch of {len(batch)}: {exc}") from None
        return np.array(result[self._output], dtype=np.float32)

    def _run_with_features_impl(self, batch: Any) -> tuple[np.ndarray, np.ndarray]:
        if self.compiled is None:
            raise InferenceError(f"{self.bundle.path}: this predictor is closed")
        features = self.compiled.output(self.outputs[1].name)
        try:
            result = self._request().infer(self.input.feeds(batch))
        except RuntimeError as exc:
            raise InferenceError(f"{self.bundle.path}: OpenVINO failed on a batch of {len(batch)}: {exc}") from None
        return np.array(result[self._output], dtype=np.float32), np.array(result[features], dtype=np.float32)

    def native_call(self) -> Callable[[Any], Any]:
        infer, feeds = self._request().infer, self.input.feeds  # the same infer request `run` uses on this thread
        return lambda batch: infer(feeds(batch))

    def close(self) -> None:
        """Drop the compiled model and this predictor's infer requests; later calls raise `InferenceError` (calls
        already running finish on the request they hold). Safe from any thread."""
        self.compiled = None
        self._local = threading.local()


def _reshape_batch(model: Any, batch_size: int) -> None:
    """Set every input's first (batch) dimension to `batch_size`; the others (a text's tokens) stay as they are."""
    shapes = {}
    for port in model.inputs:
        dims = list(port.get_partial_shape())
        shapes[port.get_any_name()] = ov.PartialShape([ov.Dimension(batch_size), *dims[1:]])
    model.reshape(shapes)
