"""What the local pipeline (job.py) and the Ray engine (ray_engine.py) share, so neither imports the
other: where a job runs, which model and decoder it uses, the predict step with its one-by-one
retry, and writing a batch of results. Nothing here starts threads or a cluster.

    plan_model(job, device)         -> CaptionModel (torch on CUDA when it can, else ONNX)
    choose_decoder(...)             -> "gpu" | "cpu"
    predict(engine, pixels, ...)    -> one probability row per image (None where it failed)
    write_captions(model, sink, ...) -> (written, [(image, reason)])
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tagloom.caption.files import relative_name
from tagloom.caption.model import CaptionModel
from tagloom.errors import TagLoomError


def resolve_device(device: str) -> str:
    device = (device or "auto").lower()
    if device == "auto":
        if importlib.util.find_spec("torch") is not None:
            import torch

            if torch.cuda.is_available():
                return "cuda"
        return "cpu"
    if device != "cpu" and not device.startswith("cuda"):
        raise TagLoomError(f"device must be auto, cpu or cuda, got {device!r}")
    return device


def _ort_has_cuda() -> bool:
    try:
        import onnxruntime as ort

        return "CUDAExecutionProvider" in ort.get_available_providers()
    except ImportError:
        return False


def _torch_stack_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "timm", "torchvision"))


def plan_model(job, device: str) -> CaptionModel:
    """Open the model of ``job`` (a CaptionJob: its ``model`` choice). On CUDA an 'auto' backend
    prefers torch: bf16 weights, torch.compile and pixels decoded on the GPU are where the GPU speed
    comes from, while the ONNX export runs in float32 (and on the CPU without onnxruntime-gpu). For
    a known hub model this fetches its model.safetensors + config.json on first use, beside an ONNX
    copy already there. Models the torch backend cannot run (JoyTag, an ONNX-only folder, offline
    without the torch files) run on ONNX as before."""
    if job.model.backend == "auto" and device.startswith("cuda") and _torch_stack_available():
        try:
            return CaptionModel.open(job.model, backend="torch")
        except TagLoomError:
            pass
    return CaptionModel.open(job.model)


def choose_decoder(decode: str, device: str, backend: str, family: str) -> str:
    """'gpu' or 'cpu'. 'auto' decodes on the GPU whenever the engine takes pixels that lie there:
    the torch backend, and ONNX models whose input is the pixels themselves (the family record's
    ``raw_pixels``: wd-v3 and ours) through IO binding. JoyTag's ONNX input is normalised on the
    host, so its pixels are decoded there too; without torchvision (an ONNX-only
    install) the CPU decodes."""
    from tagloom.tagger.runtime import engine_class

    if decode != "auto":
        return decode
    if not device.startswith("cuda") or not engine_class(backend).takes_device_pixels(family):
        return "cpu"
    has_torchvision = all(importlib.util.find_spec(m) is not None for m in ("torch", "torchvision"))
    return "gpu" if has_torchvision else "cpu"


def predict(engine, pixels, paths, failed):
    """One batch through the engine. If the batch fails, images go one by one so that a single
    problem image (or an out-of-memory batch) costs only its own caption; those are appended to
    ``failed`` as (path, reason) and their rows are None."""
    try:
        return engine.predict(pixels)
    except Exception as e:  # noqa: BLE001
        # Retry outside the except block and without the traceback: its frames hold the failed
        # call's tensors (on CUDA the whole batch's activations after an out-of-memory error), so
        # retrying inside would keep that memory taken and run out again on every single image.
        batch_error = e.with_traceback(None)
    out = []
    for i, path in enumerate(paths):
        try:
            out.append(engine.predict(pixels[i : i + 1])[0])
        except Exception as e:  # noqa: BLE001
            failed.append((path, f"the model failed on it: {e}"))
            out.append(None)
    if all(p is None for p in out) and len(paths) > 1:
        raise TagLoomError(f"the model fails on every image of a batch: {batch_error}") from batch_error
    return out


def write_captions(model: CaptionModel, sink, root: Path, paths, rows) -> tuple[int, list[tuple[Path, str]]]:
    """One batch of model rows -> caption files: (how many were written, [(image, reason)] for the
    rest). A row of None (the model failed on that image, already reported) is skipped. Only a
    sink that cannot be flushed at all (the JSONL file's disk) raises, ending the job."""
    items, failed = [], []
    for path, row in zip(paths, rows if rows is not None else []):
        if row is None:
            continue
        try:
            items.append((path, model.interpret(row, file=relative_name(Path(path), root))))
        except Exception as e:  # noqa: BLE001 - never let one image stop the run
            failed.append((path, f"{type(e).__name__}: {e}"))
    unwritten = sink.write_batch(items)
    failed += [(path, f"cannot write its caption: {e}") for path, e in unwritten]
    try:
        sink.flush()
    except OSError as e:
        raise TagLoomError(f"cannot write {sink.describe()}: {e}") from e
    return len(items) - len(unwritten), failed
