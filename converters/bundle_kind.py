"""Bundle kinds: what a bundle answers, and everything the export does differently for it.

`export_bundles` asks its kind, never checks flags (docs/ARCHITECTURE.md, "Modalities and bundle kinds"):

- `Classifier(labels)`: logits for the labels (manifest schema 1, or the modality's);
- `Embedding(section)`: L2-normalised vectors, no classes (schema 2), judged by cosine and neighbour agreement;
- `Extensible(labels, extension)`: a classifier with a second output, the features its linear head reads, and
  replay data, so a device can add classes (schema 3, `runtimes.imprint`).

The kind is orthogonal to the modality (`converters.export_input`): the modality says what goes in, the kind what
comes out and how it is judged.
"""

from __future__ import annotations

__all__ = ["BundleKind", "Classifier", "Embedding", "Extensible", "bundle_kind"]

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from runtimes.errors import InputError
from runtimes.manifest import CLASSIFIER_SCHEMA_VERSION, EMBEDDING_SCHEMA_VERSION, EXTENSIBLE_SCHEMA_VERSION, TensorSpec
from runtimes.open_set import calibrate_min_score
from runtimes.predictor import Predictor

from .embedding_gate import compare_embeddings, with_unknown_threshold
from .export_input import ExportInput
from .extension import FEATURES_OUTPUT_NAME, Extension, FeaturesOf, LogitsAndFeatures, features_gate
from .onnx_export import EMBEDDING_OUTPUT_NAME, OUTPUT_NAME
from .qat_formats import QatSource
from .validate import UNLABELLED_GATES, ReferenceData, compare


class BundleKind:
    """Base: one output, `width` values per input, judged by `gate`. Subclasses override what differs."""

    name = "classifier"
    output_name = OUTPUT_NAME
    schema_version = CLASSIFIER_SCHEMA_VERSION  # the oldest manifest schema that describes it
    tunable = True  # the accuracy-aware int8 search and quantisation-aware runs need classes

    @property
    def width(self) -> int:
        """Values per input in the first output."""
        raise NotImplementedError

    def width_problem(self, got: int) -> str | None:
        """Why a graph with `got` values per input does not fit this kind, or None."""
        return None if got == self.width else f"model outputs {got} values per input, the bundle expects {self.width}"

    def check(self, inp: ExportInput, qat: QatSource | None, accuracy_aware: bool) -> None:
        """Refuse, before any work, what this kind cannot be exported with."""

    def graph(self, model: nn.Module) -> nn.Module:
        """The module traced to ONNX."""
        return model

    extra_outputs: tuple[str, ...] = ()

    def with_reference(self, model: nn.Module, inp: ExportInput, reference: ReferenceData, ref: np.ndarray) -> BundleKind:
        """This kind completed from torch's outputs on the held-out data (thresholds, reference features)."""
        return self

    def golden_args(self, model: nn.Module) -> tuple[list[str] | None, nn.Module | None]:
        """(labels to name the golden outputs with, the module whose outputs the self-test also stores)."""
        return None, None

    def manifest_fields(self, batch_dim: int | str) -> dict[str, Any]:
        return {
            "outputs": (TensorSpec(self.output_name, "float32", (batch_dim, self.width)),),
            "labels": (),
            "embedding": None,
            "extension": None,
            "open_set": None,
        }

    def write_files(self, bundle_dir: Path) -> None:
        """Files this kind adds to every bundle."""

    def gate(
        self, predictor: Predictor, ref: np.ndarray, reference: ReferenceData, precision: str, *, min_agreement: float | None, max_drop: float
    ) -> dict[str, Any]:
        """The manifest's `validation` of the staged bundle against torch's outputs `ref`."""
        unlabelled = UNLABELLED_GATES[precision]  # applied only where the reference has no labels
        return compare(predictor, ref, reference, min_agreement=min_agreement, max_drop=max_drop, unlabelled_gate=unlabelled)

    def golden_features(self, predictor: Predictor, golden: Any) -> tuple[np.ndarray, np.ndarray] | None:
        """(torch's, the artifact's) second output on the golden inputs, where the self-test stores it."""
        return None


@dataclasses.dataclass(frozen=True)
class Classifier(BundleKind):
    """Logits for `labels`; `open_set`: the lowest top-1 score to answer with, calibrated on the held-out data
    (`runtimes.open_set`)."""

    labels: tuple[str, ...]
    open_set: dict[str, Any] | None = dataclasses.field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        if not self.labels:
            raise InputError("a classifier bundle needs its labels")

    @property
    def width(self) -> int:
        return len(self.labels)

    def width_problem(self, got: int) -> str | None:
        return None if got == self.width else f"model outputs {got} values per input but {self.width} labels were given"

    def golden_args(self, model: nn.Module) -> tuple[list[str] | None, nn.Module | None]:
        return list(self.labels), None

    def with_reference(self, model: nn.Module, inp: ExportInput, reference: ReferenceData, ref: np.ndarray) -> BundleKind:
        if self.open_set is not None or reference.targets is None:
            return self
        return dataclasses.replace(self, open_set=calibrate_min_score(ref, reference.targets))

    def manifest_fields(self, batch_dim: int | str) -> dict[str, Any]:
        return {**super().manifest_fields(batch_dim), "labels": self.labels, "open_set": self.open_set}


@dataclasses.dataclass(frozen=True)
class Embedding(BundleKind):
    """L2-normalised vectors: `section` is the manifest's embedding section (dim, normalization, layers,
    unknown_threshold; an unset threshold is calibrated on labelled held-out data)."""

    section: dict[str, Any]
    name = "embedding"
    output_name = EMBEDDING_OUTPUT_NAME
    schema_version = EMBEDDING_SCHEMA_VERSION
    tunable = False

    @property
    def width(self) -> int:
        return int(self.section["dim"])

    def width_problem(self, got: int) -> str | None:
        return None if got == self.width else f"model outputs {got} values per input but the embedding has {self.width} dimensions"

    def check(self, inp: ExportInput, qat: QatSource | None, accuracy_aware: bool) -> None:
        if qat is not None or accuracy_aware:
            raise InputError("embedding bundles are quantised post-training: the accuracy-aware search and quantisation-aware runs need classes")

    def with_reference(self, model: nn.Module, inp: ExportInput, reference: ReferenceData, ref: np.ndarray) -> BundleKind:
        if self.section.get("unknown_threshold") is not None or reference.targets is None:
            return self
        return dataclasses.replace(self, section=with_unknown_threshold(self.section, ref, reference.targets))

    def manifest_fields(self, batch_dim: int | str) -> dict[str, Any]:
        return {**super().manifest_fields(batch_dim), "embedding": self.section}

    def gate(
        self, predictor: Predictor, ref: np.ndarray, reference: ReferenceData, precision: str, *, min_agreement: float | None, max_drop: float
    ) -> dict[str, Any]:
        return compare_embeddings(predictor, ref, reference, precision, max_drop=max_drop)


@dataclasses.dataclass(frozen=True)
class Extensible(Classifier):
    """A classifier whose device can add classes: `extension` holds the manifest section and the replay arrays."""

    extension: Extension
    name = "extensible"
    schema_version = EXTENSIBLE_SCHEMA_VERSION
    tunable = False
    extra_outputs = (FEATURES_OUTPUT_NAME,)

    def check(self, inp: ExportInput, qat: QatSource | None, accuracy_aware: bool) -> None:
        if qat is not None or accuracy_aware:
            raise InputError(
                "an extensible classifier is exported from a float run and quantised post-training "
                "(no quantisation-aware run, no accuracy-aware search)"
            )
        if inp.modality != "image":
            raise InputError(f"extensible classifiers are exported for images only so far, not {inp.modality}")

    def graph(self, model: nn.Module) -> nn.Module:
        return LogitsAndFeatures(model)

    def with_reference(self, model: nn.Module, inp: ExportInput, reference: ReferenceData, ref: np.ndarray) -> BundleKind:
        completed = super().with_reference(model, inp, reference, ref)
        assert isinstance(completed, Extensible)
        features = inp.reference_outputs(FeaturesOf(model), reference.images)
        return dataclasses.replace(completed, extension=dataclasses.replace(self.extension, reference_features=features))

    def golden_args(self, model: nn.Module) -> tuple[list[str] | None, nn.Module | None]:
        return list(self.labels), FeaturesOf(model)

    def manifest_fields(self, batch_dim: int | str) -> dict[str, Any]:
        fields = super().manifest_fields(batch_dim)
        features = TensorSpec(FEATURES_OUTPUT_NAME, "float32", (batch_dim, self.extension.dim))
        return {**fields, "outputs": (*fields["outputs"], features), "extension": self.extension.section}

    def write_files(self, bundle_dir: Path) -> None:
        self.extension.write_replay(bundle_dir)

    def gate(
        self, predictor: Predictor, ref: np.ndarray, reference: ReferenceData, precision: str, *, min_agreement: float | None, max_drop: float
    ) -> dict[str, Any]:
        validation = super().gate(predictor, ref, reference, precision, min_agreement=min_agreement, max_drop=max_drop)
        features_gate(predictor, self.extension, reference.images, precision, validation)
        return validation

    def golden_features(self, predictor: Predictor, golden: Any) -> tuple[np.ndarray, np.ndarray] | None:
        return golden.features, predictor.logits_and_features(golden.originals)[1]


def bundle_kind(kind: BundleKind | list[str] | tuple[str, ...]) -> BundleKind:
    """The export's kind: a list of labels stands for a classifier."""
    if isinstance(kind, BundleKind):
        return kind
    if isinstance(kind, (list, tuple)) and all(isinstance(x, str) for x in kind):
        return Classifier(tuple(kind))
    raise InputError(f"kind must be a converters.bundle_kind.BundleKind or a list of labels, got {type(kind).__name__}")
