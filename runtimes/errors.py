"""The typed error hierarchy shared by every edge-transfer package (README: Reliability).

`runtimes` owns it because it is the one package every other package may import.
"""

from __future__ import annotations

RUNTIME_DISTRIBUTION = "edge-transfer-runtime"  # the device's distribution (make wheels); its extras add backends


def install_hint(extra: str) -> str:
    """How to add an optional part on a device: the runtime distribution's extra."""
    return f"pip install '{RUNTIME_DISTRIBUTION}[{extra}]'"


class EdgeTransferError(Exception):
    """Root of every error edge-transfer raises on purpose.

    The CLI prints one line for these and exits non-zero; anything else is a bug and keeps its traceback.
    """


class InputError(EdgeTransferError, ValueError):
    """Input given to a predictor (or a command) does not match what the model expects."""


class BundleError(EdgeTransferError):
    """A bundle directory or its manifest is missing, malformed or unsupported."""


class IntegrityError(BundleError):
    """A bundle file's size or checksum differs from the manifest, or a file is unlisted or unsafe."""


class SignatureError(IntegrityError):
    """This device trusts signing keys and the bundle is unsigned, signed by another key, or differs from what was
    signed (docs/guides/delivery.md); raised before any model bytes are parsed."""


class BackendUnavailableError(EdgeTransferError):
    """The backend a bundle needs, or the optional library a command needs (OpenCV for video), is not installed on
    this machine; the message names what to install."""


class EngineIncompatibleError(EdgeTransferError):
    """A compiled engine was built for another runtime version or device than the one present."""


class StreamError(EdgeTransferError):
    """A video file, stream or camera that could not be opened, ended before the frames it declares, or stalled;
    raised after the frames it did give."""


class InferenceError(EdgeTransferError):
    """A backend failed while running a batch, or the predictor was used after `close()`."""


class SelfTestFailed(EdgeTransferError):
    """A bundle's self-test disagrees with its torch reference beyond the tolerance on this device and precision.
    `result` holds the measured `runtimes.selftest.SelfTestResult`."""

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result


class ValidationFailed(EdgeTransferError):
    """An exported artifact disagrees with its torch reference beyond the tolerance."""


class DatasetError(EdgeTransferError):
    """A dataset (folder, array or file) cannot be used; the message names the file or field at fault."""


class CheckpointError(EdgeTransferError):
    """A training run directory or weights file cannot be read."""


class TrainingError(EdgeTransferError):
    """Training cannot go on: a loss, a metric or a weight became NaN or infinite. Nothing is saved."""


class OutputError(EdgeTransferError):
    """Output cannot go where it was asked to: the destination holds something edge-transfer did not write (or lies
    in the user's data), or the file system refused the write. Whatever was there before is left as it was."""


__all__ = [
    "EdgeTransferError",
    "InputError",
    "BundleError",
    "IntegrityError",
    "BackendUnavailableError",
    "EngineIncompatibleError",
    "InferenceError",
    "StreamError",
    "SelfTestFailed",
    "ValidationFailed",
    "DatasetError",
    "CheckpointError",
    "OutputError",
    "TrainingError",
]


class GalleryError(EdgeTransferError):
    """A gallery file that cannot be used: unreadable, damaged (checksum), or made with another model
    (`GalleryMismatch`)."""


class GalleryMismatch(GalleryError):
    """A gallery enrolled with a different embedding model than the bundle it is used with."""
