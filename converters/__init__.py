"""Host-side compilers: a trained torch classifier -> validated, deployable bundles. Never imports edge_transfer."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["export_bundle", "ReferenceData", "FORMATS"]


def __getattr__(name: str):  # lazy: importing converters does not import torch until needed
    if name in ("export_bundle", "FORMATS", "ExportResult"):
        from . import export

        return getattr(export, name)
    if name == "ReferenceData":
        from .validate import ReferenceData

        return ReferenceData
    raise AttributeError(name)
