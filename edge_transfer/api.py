"""The Python API: everything the CLI does is one call here (`train`, `export`, `demo`; `load` is runtimes').

Options live in one object per command (`TrainConfig`, `converters.options.ExportOptions`), each holding the one
default of every option; keyword arguments override single fields. Progress goes to the module loggers
(`logging.getLogger("edge_transfer")`, "converters", "runtimes"); the CLI prints them.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from converters.options import ExportOptions
from runtimes.errors import InputError
from runtimes.outputs import Protected

from .config import QatConfig, TrainConfig
from .distributed import main_process_only
from .trained_run import TrainedRun

logger = logging.getLogger(__name__)


def train(data: Any = "digits", *, out: str | os.PathLike[str], config: TrainConfig | None = None, **overrides: Any) -> TrainedRun:
    """Transfer-learn a backbone onto `data` and save a run: images ("digits", an image-folder path, an
    `ImageDataset`) or text (class folders of .txt, a CSV/TSV/JSONL table, a `TextDataset`), told apart by
    `host_task.task_for_data`.

    `config` holds every option (see `TrainConfig`; default: all defaults); keyword arguments override single
    fields, e.g. `train("photos/", out="runs/p", strategy="finetune", epochs=5)`. The run directory holds
    model.safetensors and config.json (metrics, split, data fingerprint): no pickle. finetune/partial checkpoint
    every epoch to `<out>.checkpoint` (removed once the run is saved); `resume=True` continues from it. Under
    `accelerate launch` / `torchrun` every process calls this; only the main one writes. `batch_size` is the
    global batch, split across processes.
    """
    from .host_task import task_for_data

    cfg = (config or TrainConfig()).with_overrides(**overrides)
    cfg.resolved()  # bad options fail here, before any data or model is loaded
    return task_for_data(data).train(data, out, cfg)


def qat(run: str | os.PathLike[str], *, out: str | os.PathLike[str] | None = None, config: QatConfig | None = None, **overrides: Any) -> TrainedRun:
    """Quantisation-aware fine-tuning of a finished run (`QatConfig`; keyword arguments override single fields),
    saved as a new run at `out` (default RUN/qat) that `export` turns into int8 bundles with the learned scales.
    Under `accelerate launch` / `torchrun` every process calls this; only the main one writes."""
    from .host_task import task_for_run
    from .model import read_run_config

    return task_for_run(read_run_config(run)).qat(run, out, (config or QatConfig()).with_overrides(**overrides))


# ------------------------------------------------------------------------------------------------ export


@main_process_only
def export(
    run: str | os.PathLike[str] | None = None, *, out: str | os.PathLike[str], options: ExportOptions | None = None, **overrides: Any
) -> list[Any]:
    """Export a training run (or, with `backbone`, the source model as it is) to validated bundles, one per format.

    `options` holds every option (see `converters.options.ExportOptions`); keyword arguments override single
    fields, e.g. `export(run, out=..., format="onnx,openvino-int8", accuracy_aware=True, target_cpu="x86-vnni")`.
    With several formats each bundle goes to `out/<format>`. Validation uses the run's held-out test split (or all
    of `data`); int8 calibration draws `calibration_size` images from the training split (or from
    `calibration_data`); accuracy-aware quantisation tunes on the val split; `target_cpu` is the CPU the int8
    bundles will run on, never this host's (see `runtimes.cpu.TARGET_CPUS`). `max_drop` is in accuracy points.
    `tensorrt` (`TensorRTOptions` or a dict of its fields) sets the engine build of the tensorrt formats; the
    engine itself is built on the device. Each bundle carries a self-test of `self_test_size` golden images
    (`edge-transfer check`). Returns a list of `converters.export.ExportResult`; raises `ValidationFailed` (with
    the table) if any format was not written. Under a launcher only rank 0 exports (see `main_process_only`).
    """
    from converters.existing import check_export_targets
    from converters.export import parse_formats

    from .host_task import task_for_backbone, task_for_run
    from .model import read_run_config

    opts = (options or ExportOptions()).with_overrides(**overrides)
    if (run is None) == (opts.backbone is None):
        raise InputError("export needs either a training run directory or --backbone NAME --strategy pretrained")
    formats = parse_formats(opts.format)
    run_source = (read_run_config(run).get("data") or {}).get("source") if run is not None else None
    protected = [
        Protected("the source run", run),
        Protected("--backbone", opts.backbone),
        Protected("--data", opts.data),
        Protected("--calibration-data", opts.calibration_data),
        Protected("the run's training data", run_source),
    ]
    check_export_targets(out, formats, overwrite=opts.overwrite, skip_existing=opts.skip_existing, protected=protected)
    if run is None:
        assert opts.backbone is not None
        return task_for_backbone(opts.backbone).export_source(out, opts, formats)
    config = read_run_config(run)
    return task_for_run(config).export_run(run, config, out, opts, formats)
