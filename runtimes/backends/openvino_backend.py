"""OpenVINO backend. Imported lazily by the registry; needs numpy and openvino only."""

from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np
import openvino as ov

from ..bundle import Bundle
from ..errors import BackendUnavailableError, InputError
from ..predictor import Predictor

DEVICES = ("cpu", "gpu", "npu", "auto")
HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}


class OpenVinoPredictor(Predictor):
    """Runs an OpenVINO IR bundle (model.xml + model.bin) with `openvino.Core.compile_model`.

    device: "cpu" (default), "gpu", "npu" or "auto" (OpenVINO picks; the device it picked is reported).
    hint: "latency" (default) or "throughput" (OpenVINO's PERFORMANCE_HINT). threads: CPU inference threads
    (0 = OpenVINO's default). streams: NUM_STREAMS (default: what the hint picks). A device OpenVINO does not
    see raises `BackendUnavailableError` naming the ones it does; nothing falls back silently. NPUs need static shapes: export with a fixed batch for them.
    Calls are concurrent: each thread gets its own infer request.
    """

    backend_name = "openvino"

    def __init__(self, bundle: Bundle, device: str | None = None, *, hint: str = "latency", threads: int = 0,
                 streams: int | None = None, **options: Any) -> None:
        super().__init__(bundle)
        if options:
            raise InputError(f"unknown openvino option(s): {', '.join(sorted(options))} (known: hint, threads, streams)")
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
        if dev == "npu" and self.max_batch is None:
            raise InputError(f"{bundle.path}: NPUs need a static batch; export this bundle with a fixed batch (--batch-size N)")
        config: dict[str, Any] = {"PERFORMANCE_HINT": HINTS[hint]}
        if threads and dev == "cpu":
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if streams is not None:
            config["NUM_STREAMS"] = int(streams)
        try:
            self.compiled = core.compile_model(core.read_model(str(bundle.entrypoint)), dev.upper(), config)
        except RuntimeError as exc:
            raise BackendUnavailableError(f"OpenVINO could not compile {bundle.entrypoint.name} for {dev.upper()}: {exc}") from None
        self.execution_devices = [str(d) for d in self.compiled.get_property("EXECUTION_DEVICES")]
        self._device = dev
        self._hint = hint
        self._local = threading.local()

    @property
    def device(self) -> str:
        """The device(s) OpenVINO actually runs on, e.g. 'cpu', or 'auto:CPU' when AUTO chose."""
        actual = ",".join(self.execution_devices)
        return self._device if self._device != "auto" else f"auto:{actual}"

    def describe(self) -> dict[str, Any]:
        return dict(super().describe(), execution_devices=list(self.execution_devices), hint=self._hint,
                    streams=int(self.compiled.get_property("NUM_STREAMS")), openvino=ov.__version__)

    def _request(self):
        """This thread's infer request (created on first use)."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def _run_impl(self, batch: np.ndarray) -> np.ndarray:
        result = self._request().infer({0: batch})
        return np.array(result[self.compiled.output(0)], dtype=np.float32)

    def native_call(self) -> Callable[[np.ndarray], Any]:
        return self._request().infer  # the same infer request `run` uses on this thread

    def close(self) -> None:
        self._local = threading.local()
        self.compiled = None
