"""NNCF, imported quietly (it is the OpenVINO int8 quantiser; see openvino_convert.py)."""

from __future__ import annotations

import logging
from typing import Any


def import_nncf() -> Any:
    """nncf, imported without torch's "No CUDA runtime is found" warning: importing NNCF loads torch's C++
    extension helpers, which look for CUDA and warn on every CPU-only host; int8 export never builds an extension."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    import nncf

    # NNCF logs through its own stdout handler and also propagates to the root logger, so every warning came out
    # twice, and its INFO lines (algorithm internals) with them: one path, the application's, at WARNING and above
    log = logging.getLogger("nncf")
    for handler in list(log.handlers):
        log.removeHandler(handler)
    log.setLevel(logging.WARNING)
    log.propagate = True
    return nncf
