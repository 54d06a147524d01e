"""edge-transfer's device-side runtime: load a bundle, check it, run it. Needs numpy plus one backend, never torch.

import runtimes
predictor = runtimes.load("my_bundle")          # verifies manifest + checksums first (and the signature, with trusted_keys=)
predictor.predict(image, top_k=3)                # any image size; the bundle's preprocessing is applied
predictor.run(batch_uint8_nhwc)                  # raw logits
runtimes.load("text_bundle").predict(["a text"])  # a text bundle: its own tokenizer.json (pip install tokenizers)
for r in predictor.stream(runtimes.VideoSource("clip.mp4")): ...  # frames read while the model runs (OpenCV: [video])
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from .bundle import Bundle, BundleWriter, open_bundle, read_manifest, sign_bundle
from .errors import (
    BackendUnavailableError,
    BundleError,
    CheckpointError,
    DatasetError,
    EdgeTransferError,
    EngineIncompatibleError,
    InferenceError,
    InputError,
    IntegrityError,
    SelfTestFailed,
    SignatureError,
    StreamError,
    ValidationFailed,
)
from .fleet.deploy import deploy, rollback
from .fleet.follow import FollowingPredictor, follow
from .manifest import SCHEMA_VERSION, Manifest
from .predictor import Classification, Predictor, softmax
from .preprocess import PreprocessConfig, prepare_batch, prepare_image, read_image
from .signing import KeySource
from .video import VideoSource


def _package_version() -> str:
    """The installed distribution's version (pyproject.toml is its one home); '0+unknown' when run from a copy."""
    from importlib.metadata import PackageNotFoundError, version

    for distribution in ("edge-transfer", "edge-transfer-runtime"):  # a host install, or the device's runtime alone
        try:
            return version(distribution)
        except PackageNotFoundError:
            continue
    return "0+unknown"


__version__ = _package_version()


def load(
    bundle_dir: str | os.PathLike[str],
    device: str | None = None,
    *,
    backend: str | None = None,
    trusted_keys: Iterable[KeySource] | None = None,
    **backend_options: Any,
) -> Predictor:
    """Verify a bundle (schema, paths, sizes, sha256) and return a ready `Predictor` for its backend.

    `backend` ("onnxruntime", "openvino", "tensorrt"): refuse, before any file is read, a bundle made for another
    one (an app that ships one backend); by default the bundle's own backend is used. `trusted_keys`: public keys
    (files, folders of *.pub, PEM bytes) one of which must have signed the bundle (`SignatureError` otherwise);
    by default those of `EDGE_TRANSFER_TRUSTED_KEYS`, if set (`runtimes.signing`)."""
    from .backends import create_predictor

    if backend is not None:
        made_for = read_manifest(bundle_dir).backend
        if made_for != backend:
            raise BundleError(f"{bundle_dir}: this bundle is for {made_for}, and {backend} was asked for")
    return create_predictor(open_bundle(bundle_dir, trusted_keys=trusted_keys), device=device, **backend_options)


__all__ = [
    "load",
    "open_bundle",
    "deploy",
    "rollback",
    "follow",
    "FollowingPredictor",
    "sign_bundle",
    "read_manifest",
    "Bundle",
    "BundleWriter",
    "Manifest",
    "Predictor",
    "Classification",
    "PreprocessConfig",
    "prepare_image",
    "prepare_batch",
    "read_image",
    "softmax",
    "SCHEMA_VERSION",
    "EdgeTransferError",
    "InputError",
    "BundleError",
    "IntegrityError",
    "SignatureError",
    "BackendUnavailableError",
    "EngineIncompatibleError",
    "InferenceError",
    "SelfTestFailed",
    "StreamError",
    "VideoSource",
    "ValidationFailed",
    "DatasetError",
    "CheckpointError",
]
