"""Accelerate set-up and the helpers that keep several processes in step (README: GPUs, several GPUs or machines)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch

from runtimes.errors import EdgeTransferError, InputError


def make_accelerator(device: str = "auto", mixed_precision: str = "auto") -> Any:
    """An `accelerate.Accelerator`: CUDA when present (bf16 where supported, else fp16 with loss scaling), else CPU.

    Under `accelerate launch` or `torchrun` it joins the process group (NCCL on GPUs, gloo on CPUs). Batches are
    split across processes (`split_batches`): `batch_size` is the global batch, so the data order, the number of
    steps and the learning-rate schedule do not depend on how many processes run.
    """
    from accelerate import Accelerator, DataLoaderConfiguration

    use_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but torch sees no CUDA GPU")
    if mixed_precision == "auto" and os.environ.get("ACCELERATE_MIXED_PRECISION", "no") != "no":
        mixed_precision = os.environ["ACCELERATE_MIXED_PRECISION"]  # `accelerate launch --mixed_precision X`
    if mixed_precision == "auto":
        mixed_precision = "no" if use_cpu else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    if use_cpu and mixed_precision == "fp16":
        raise InputError("fp16 mixed precision needs a CUDA GPU; use 'bf16' or 'no' on the CPU")
    _forget_other_single_process_settings(use_cpu, mixed_precision)
    loading = DataLoaderConfiguration(split_batches=True, non_blocking=not use_cpu)  # pinned batches copy asynchronously
    return Accelerator(cpu=use_cpu, mixed_precision=mixed_precision, dataloader_config=loading)


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """Plain fp32 arithmetic, as an exported bundle computes: no autocast, and no TF32 in cuDNN convolutions or
    cuBLAS matrix products (PyTorch allows it for convolutions by default). The flags are restored on exit.

    Validation metrics and cached features are computed under it, so what training selects and learns from is
    what the device will compute. On an H200, TF32 moved 1.4-1.7% of a digits model's test answers away from its
    ONNX bundle's, and bf16 autocast 9-29%; plain fp32 agreed on every one (docs/guides/images.md, "GPUs").
    """
    settings = (torch.backends.cudnn.conv, torch.backends.cuda.matmul)  # type: ignore[attr-defined]  # untyped in torch
    saved = [s.fp32_precision for s in settings]
    for s in settings:
        s.fp32_precision = "ieee"
    try:
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            yield
    finally:
        for s, value in zip(settings, saved, strict=True):
            s.fp32_precision = value


def unwrapped_forward(net: torch.nn.Module, accelerator: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's own forward, without the autocast wrapper Accelerate puts on a prepared model's instance.

    It bypasses DDP too, so with several processes the main process's buffers (BatchNorm statistics) are first
    broadcast to the others, as DDP's own forward would: every process then evaluates the model the main one saves."""
    model = accelerator.unwrap_model(net)
    if accelerator.num_processes > 1:
        with torch.no_grad():
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, src=0)
    return functools.partial(type(model).forward, model)


def _forget_other_single_process_settings(use_cpu: bool, mixed_precision: str) -> None:
    """Let a later `train()` in the same Python session choose another device or precision.

    Accelerate keeps the first Accelerator's choice process-wide and raises on a different one. In a single process
    nothing else shares that state, so it is started afresh; under a launcher the launcher's choice stands.
    """
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("num_processes", 1) == 1 and (state.get("_cpu") != use_cpu or state.get("_mixed_precision") != mixed_precision):
        AcceleratorState._reset_state()


def distributed_rank() -> int:
    """This process's global rank (0 when not launched with several processes)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def wait_for_all_ranks() -> None:
    """A barrier across processes when a process group is up; a no-op otherwise."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def check_divisible(batch: int, accelerator: Any, what: str) -> None:
    n = accelerator.num_processes
    if batch % n:
        raise InputError(f"{what} {batch} must be a multiple of the number of processes ({n}): it is split across them")


def auto_workers(accelerator: Any) -> int:
    """Data-loading workers: none on the CPU (they would compete with training for cores), several per GPU."""
    if accelerator.device.type != "cuda":
        return 0
    per_node = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(8, (os.cpu_count() or 2) // per_node - 1))


def ranks_with(flag: bool, accelerator: Any) -> int:
    """On how many processes `flag` holds (e.g. one process's missing cache file means all recompute)."""
    if accelerator.num_processes == 1:
        return int(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return int(accelerator.reduce(t, reduction="sum").item())


def quiet_unless_main(is_main: bool) -> None:
    """One voice under a launcher: on processes other than the main one, our loggers say warnings and errors only."""
    if not is_main:
        for name in ("edge_transfer", "converters", "runtimes"):
            logging.getLogger(name).setLevel(logging.WARNING)


def main_process_only(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Under `torchrun` / `accelerate launch`, run `fn` on rank 0 alone: one writer per artifact.

    With a process group up (e.g. after `train` in the same script) the other ranks wait and get rank 0's result,
    or raise its error. Without one (the command itself launched on several processes) they return `[]` at once.
    """

    @functools.wraps(fn)
    def on_rank_zero(*args: Any, **kwargs: Any) -> Any:
        import pickle

        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return fn(*args, **kwargs) if distributed_rank() == 0 else []
        box: list[Any] = [None]
        error: BaseException | None = None
        if dist.get_rank() == 0:
            try:
                box = [("result", fn(*args, **kwargs))]
            except Exception as exc:  # every rank raises it; rank 0 keeps its own traceback
                error = exc
                try:
                    pickle.dumps(exc)
                    box = [("error", exc)]
                except Exception:
                    box = [("error", EdgeTransferError(f"rank 0 failed: {type(exc).__name__}: {exc}"))]
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if error is not None:
            raise error
        if kind == "error":
            raise value
        return value

    return on_rank_zero
