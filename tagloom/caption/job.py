"""A caption job: a folder of images -> a caption per image, as fast as the machine allows.

The local pipeline overlaps its three stages (tagloom.caption.stages, which knows nothing of models):

    decode (pool: all cores on CPU, nvjpeg on CUDA) -> batches -> engine -> interpret + write
    [reader thread + decode pool]                   [main thread]  [writer thread]

so files are read and decoded while the model runs, and captions are written while the next batch
runs. Every image ends up done, skipped (its caption was already there) or failed with a reason;
nothing that fails stops the run. The same job runs on a Ray cluster with `engine="ray"`
(tagloom.caption.ray_engine), writing the same outputs; what both share (the plan, the predict
step, writing a batch) is in tagloom.caption.plan.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from tagloom import names
from tagloom.progress import Progress  # the core protocol; the old name stays importable here
from tagloom.caption.files import duplicate_stems, list_images, relative_name
from tagloom.caption.model import ModelChoice
from tagloom.caption.stages import run_stages
# The plan and the predict step are shared with the Ray engine; they are re-exported here under
# their old names (tests and callers import them from this module).
from tagloom.caption.plan import (  # noqa: F401
    _ort_has_cuda,
    _torch_stack_available,
    choose_decoder,
    plan_model,
    predict as _predict,
    resolve_device,
    write_captions,
)
from tagloom.errors import TagLoomError

DECODERS = ("auto", "cpu", "gpu")
ENGINES = names.CAPTION_ENGINES


@dataclass
class CaptionJob:
    folder: Path
    model: ModelChoice = field(default_factory=ModelChoice)
    recursive: bool = False
    fmt: str = "txt"  # txt | json | jsonl
    output: Path | None = None  # the JSONL file (default: <folder>/captions.jsonl)
    overwrite: bool = False  # False = skip images that already have a caption (and resume)
    text_field: str = "tags"  # what a .txt holds: tags | caption
    batch_size: int = 0  # 0 = 16 on CPU, 64 on CUDA
    device: str = "auto"  # auto | cpu | cuda[:N]
    precision: str = "auto"  # auto (bf16 on Ampere+ GPUs, else fp32) | fp32 | bf16 | fp16 (torch backend)
    compile: bool = False  # torch.compile the model (CUDA: worth it for folders of thousands)
    decode: str = "auto"  # auto (gpu on CUDA, else cpu) | cpu | gpu (torchvision decoder on the device)
    workers: int | None = None  # decode workers; None = every core
    decode_mode: str = "thread"  # thread | process
    threads: int | None = None  # ONNX Runtime intra-op threads; None = every core
    engine: str = "local"  # local | ray
    ray_address: str | None = None  # None = start a local cluster; "auto" = the running one
    ray_actors: int | None = None  # model actors; None = one per GPU, else one per CPU node


@dataclass
class Summary:
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    seconds: float = 0.0  # the whole job, model loading included
    load_seconds: float = 0.0  # opening the model and the engine (Ray: the cluster too)
    device: str = ""
    provider: str = ""
    output: str = ""
    resumed: bool = False

    @property
    def images_per_second(self) -> float:
        """Throughput once the model is loaded (what a bigger folder would see)."""
        busy = self.seconds - self.load_seconds
        return self.done / busy if busy > 0 else 0.0

    def text(self, max_failures: int = 50) -> str:
        if self.total == 0:
            return "no image files found (.jpg .jpeg .png .webp .bmp .gif .tif .avif; --recursive for sub-folders)"
        lines = [
            f"done {self.done}, skipped {self.skipped} (caption already there), failed {len(self.failed)} "
            f"of {self.total} images in {self.seconds:.1f} s (model load {self.load_seconds:.1f} s, then "
            f"{self.images_per_second:.1f} images/s on {self.provider or self.device}) -> {self.output}"
        ]
        if self.resumed:
            lines.append("  (continued an interrupted --overwrite run: captions it had already rewritten were kept)")
        for file, reason in self.failed[:max_failures]:
            lines.append(f"  failed: {file}: {reason}")
        if len(self.failed) > max_failures:
            lines.append(f"  ... and {len(self.failed) - max_failures} more failures")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"total": self.total, "done": self.done, "skipped": self.skipped,
                "failed": [{"file": f, "reason": r} for f, r in self.failed],
                "seconds": round(self.seconds, 3), "load_seconds": round(self.load_seconds, 3), "images_per_second": round(self.images_per_second, 2),
                "device": self.device, "provider": self.provider, "output": self.output}


def select_images(job: CaptionJob, sink) -> tuple[list[Path], int, list[tuple[str, str]], int]:
    """(images to caption, how many already have captions, failures found before decoding, total)."""
    root = Path(job.folder)
    images = list_images(root, job.recursive)
    clashes = duplicate_stems(images, job.fmt) if job.fmt in ("txt", "json") else {}
    failed = [(relative_name(img, root), f"its caption file {Path(img).with_suffix('.' + job.fmt).name} belongs to "
               f"{relative_name(owner, root)} (same name, other extension); rename one of them")
              for img, owner in clashes.items()]
    todo, skipped = [], 0
    for img in images:
        if img in clashes:
            continue
        if sink.is_done(img):
            skipped += 1
        else:
            todo.append(img)
    return todo, skipped, failed, len(images)


def run_caption(job: CaptionJob, progress: Progress | None = None) -> Summary:
    """Run a whole job and return its summary. Raises only for job-level problems (no such folder,
    no model, cancel); a bad image is a line in Summary.failed."""
    from tagloom.caption.writers import make_sink

    progress = progress or Progress()
    if job.engine not in ENGINES:
        raise TagLoomError(f"engine must be local or ray, got {job.engine!r}")
    if job.decode not in DECODERS:
        raise TagLoomError(f"decode must be auto, cpu or gpu, got {job.decode!r}")
    root = Path(job.folder)
    sink, state = make_sink(root, job.fmt, job.output, job.overwrite, job.text_field)
    try:
        todo, skipped, failed, total = select_images(job, sink)
        summary = Summary(total=total, skipped=skipped, failed=list(failed), output=sink.describe(),
                          resumed=state.resumed)
        started = time.perf_counter()
        if todo:
            if job.engine == "ray":
                from tagloom.caption.ray_engine import run_ray

                run_ray(job, todo, sink, summary, progress)
            else:
                run_local(job, todo, sink, summary, progress)
        summary.seconds = time.perf_counter() - started
    finally:
        sink.close()
        progress.close()
    state.finish()  # only after a run that was not interrupted
    return summary


# --- the local pipeline -------------------------------------------------------------------------

def _cpu_batches(decoder, paths, batch_size):
    pixels, ok, failed = [], [], []
    for item in decoder.map(paths):
        if item.pixels is None:
            failed.append((item.path, item.error))
        else:
            pixels.append(item.pixels)
            ok.append(item.path)
        if len(ok) >= batch_size or len(failed) >= batch_size:
            yield (np.stack(pixels) if pixels else None), ok, failed
            pixels, ok, failed = [], [], []
    if ok or failed:
        yield (np.stack(pixels) if pixels else None), ok, failed


def _gpu_batches(decoder, paths, batch_size):
    for i in range(0, len(paths), batch_size):
        yield decoder.decode_batch(paths[i : i + batch_size])


def run_local(job: CaptionJob, todo: list[Path], sink, summary: Summary, progress: Progress) -> None:
    from tagloom.caption.engines import make_engine

    started = time.perf_counter()
    root = Path(job.folder)
    device = resolve_device(job.device)
    model = plan_model(job, device)
    engine_device = device
    if job.device == "auto" and device.startswith("cuda") and model.backend == "onnx":
        # A GPU, but no torch weights: ONNX Runtime on CUDA where it can start it, else the CPU.
        # "auto" lets onnx_session fall back (onnxruntime-gpu lists CUDA even when its CUDA/cuDNN
        # libraries are missing or the wrong version); the engine reports where it really runs.
        engine_device = "auto" if _ort_has_cuda() else "cpu"
    batch_size = job.batch_size or (64 if device.startswith("cuda") else 16)
    engine = make_engine(model, engine_device, job.precision, job.compile, job.threads, batch_size)
    if engine.device == "cpu" and device != "cpu":
        device = "cpu"  # decode on the CPU too, use the CPU batch size, and say so in the summary
        batch_size = job.batch_size or 16
    summary.device, summary.provider = device, engine.provider
    summary.load_seconds = time.perf_counter() - started
    try:
        size = model.input_size or engine.input_size
        if not size:
            raise TagLoomError(f"{model.path}: cannot tell the model's input size (no config.json, dynamic ONNX input)")
        decode = choose_decoder(job.decode, device, model.backend, model.family)
        if decode == "gpu":
            from tagloom.caption.gpu import TorchDecoder

            try:
                decoder = TorchDecoder(size, device, job.workers)
            except ImportError as e:
                raise TagLoomError(f"--decode gpu needs torch and torchvision: {e}") from e
            batches = lambda: _gpu_batches(decoder, todo, batch_size)  # noqa: E731
        else:
            from tagloom.caption.decode import CpuDecoder

            decoder = CpuDecoder(size, job.workers, job.decode_mode)
            batches = lambda: _cpu_batches(decoder, todo, batch_size)  # noqa: E731
    except BaseException:
        engine.close()
        raise

    lock = threading.Lock()

    def read():
        with decoder:
            yield from batches()

    def compute(item):
        pixels, paths, failed = item
        probs = _predict(engine, pixels, paths, failed) if paths else None
        if isinstance(probs, np.ndarray) and probs.shape[-1] != len(model.labels):
            raise TagLoomError(f"{model.path}: the model gives {probs.shape[-1]} scores per image but its "
                               f"label list has {len(model.labels)} tags (a selected_tags.csv from another model?)")
        return paths, probs, failed

    def write(item) -> int:
        paths, probs, failed = item
        done, problems = write_captions(model, sink, root, paths, probs)
        with lock:
            for path, reason in failed + problems:
                summary.failed.append((relative_name(Path(path), root), reason))
            summary.done += done
        return done + len(failed) + len(problems)

    try:
        run_stages(read, compute, write, progress, len(todo), name="tagloom-caption")
    finally:
        engine.close()
