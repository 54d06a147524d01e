"""Host-side compilers: a trained torch classifier -> validated, deployable bundles. Never imports edge_transfer."""

from __future__ import annotations

from runtimes import __version__ as __version__  # one home: pyproject.toml

__all__ = ["export_bundle", "ReferenceData", "FORMATS"]


def __getattr__(name: str):  # lazy: importing converters does not import torch until needed
    if name in ("export_bundle", "FORMATS", "ExportResult"):
        from . import export

        return getattr(export, name)
    if name == "ReferenceData":
        from .validate import ReferenceData

        return ReferenceData
    raise AttributeError(name)
