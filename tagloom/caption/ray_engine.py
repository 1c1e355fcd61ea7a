"""`--engine ray`: the caption job on a Ray cluster, with the same outputs as the local pipeline.

    paths (driver) -> Ray Data: read + decode tasks on every CPU of the cluster
                   -> model actors (one per GPU; CPU actors when the cluster has none)
                   -> results streamed back to the driver, which interprets and writes them

- On GPUs with the torch backend the read tasks only read bytes and the actor decodes JPEGs on its
  GPU (nvjpeg, tagloom.caption.gpu), because CPU decoding is what limits a GPU tagger; otherwise
  the tasks decode to the model's uint8 pixels with the reference CPU path.
- The driver alone writes (captions beside the images, or the one JSONL), so resume, atomic
  writes and the summary are exactly the local job's. The folder (and the model folder) must be on
  storage every node sees at the same path (NFS, a shared volume), as for any Ray job on files.
- `ray.init(address=job.ray_address)`: None starts a local cluster (every core, every GPU) that
  lives until the process exits; "auto" joins the cluster this machine belongs to; "ray://head:10001"
  connects a remote client. The tagloom package is shipped to the workers (runtime_env py_modules),
  so workers need only its dependencies (numpy, pillow, onnxruntime or torch/timm).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tagloom.caption.files import relative_name
from tagloom.caption.plan import choose_decoder, plan_model, predict, write_captions
from tagloom.errors import TagLoomError


def _read_and_decode(batch: dict, size: int) -> dict:
    """Ray Data task: paths -> uint8 pixels (zeros where an image failed) + error strings."""
    from tagloom.caption.decode import decode_file

    paths = list(batch["path"])
    pixels = np.zeros((len(paths), size, size, 3), np.uint8)
    errors = []
    for i, p in enumerate(paths):
        item = decode_file(Path(p), size)
        if item.pixels is None:
            errors.append(item.error)
        else:
            pixels[i] = item.pixels
            errors.append("")
    return {"path": np.asarray(paths, dtype=object), "pixels": pixels, "error": np.asarray(errors, dtype=object)}


def _read_bytes(batch: dict) -> dict:
    """Ray Data task for GPU decoding: paths -> file bytes (the actor decodes on its GPU)."""
    datas, errors = [], []
    for p in batch["path"]:
        try:
            with open(p, "rb") as f:
                datas.append(f.read())
            errors.append("")
        except OSError as e:
            datas.append(b"")
            errors.append(f"cannot be read: {e}")
    return {"path": np.asarray(list(batch["path"]), dtype=object), "data": np.asarray(datas, dtype=object),
            "error": np.asarray(errors, dtype=object)}


class CaptionActor:
    """One model replica (one GPU, or some CPU threads): pixels or JPEG bytes -> probabilities."""

    def __init__(self, model_path: str, backend: str, family: str, device: str, precision: str, compile: bool,
                 threads: int | None, batch_size: int, size: int, n_labels: int, gpu_decode: bool):
        from tagloom.caption.engines import job_options
        from tagloom.tagger.runtime import open_engine

        # The one runtime, with the local job's options (tagloom.caption.engines.job_options).
        self.engine = open_engine(Path(model_path), backend, family,
                                  job_options(device, precision, compile, threads, batch_size))
        self.n_labels = n_labels
        self.decoder = None
        if gpu_decode:
            from tagloom.caption.gpu import TorchDecoder

            self.decoder = TorchDecoder(size, device, workers=4)

    def __call__(self, batch: dict) -> dict:
        paths = [str(p) for p in batch["path"]]
        errors = [str(e) for e in batch["error"]]
        probs = np.zeros((len(paths), self.n_labels), np.float32)
        index = {p: i for i, p in enumerate(paths)}
        if self.decoder is not None:
            todo = [i for i, e in enumerate(errors) if not e]
            pixels, ok, failed = self.decoder.decode_bytes([Path(paths[i]) for i in todo],
                                                           [batch["data"][i] for i in todo])
            for p, reason in failed:
                errors[index[str(p)]] = reason
            rows = [index[str(p)] for p in ok]
        else:
            rows = [i for i, e in enumerate(errors) if not e]
            pixels = batch["pixels"][rows] if rows else None
        if rows:
            failed: list = []
            out = predict(self.engine, pixels, [paths[i] for i in rows], failed)
            for i, row in zip(rows, out):
                if row is not None:
                    probs[i] = row
            for p, reason in failed:
                errors[index[str(p)]] = reason
        return {"path": np.asarray(paths, dtype=object), "probs": probs, "error": np.asarray(errors, dtype=object)}


def _init_ray(address: str | None):
    import ray

    import tagloom

    if ray.is_initialized():
        return ray
    runtime_env = {"py_modules": [str(Path(tagloom.__file__).parent)]}
    try:
        ray.init(address=address, runtime_env=runtime_env, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR", configure_logging=True)
    except ConnectionError as e:
        raise TagLoomError(f"cannot reach the Ray cluster at {address}: {e}") from e
    return ray


def run_ray(job, todo: list[Path], sink, summary, progress) -> None:
    try:
        import ray  # noqa: F401
        import ray.data
    except ImportError as e:
        raise TagLoomError("--engine ray needs Ray: pip install 'ray[data]'") from e

    import time

    started = time.perf_counter()
    root = Path(job.folder)
    ray = _init_ray(job.ray_address)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    device = "cuda" if gpus and job.device != "cpu" else "cpu"
    if job.device.startswith("cuda") and not gpus:
        raise TagLoomError("device 'cuda' was asked for, but the Ray cluster has no GPUs")
    model = plan_model(job, device)
    size = model.input_size or _onnx_input_size(model.path, model.family)
    batch_size = job.batch_size or (64 if device == "cuda" else 16)
    actors = job.ray_actors or (gpus if device == "cuda" else 1)
    # As in the local job: "gpu" = torchvision's decoder on the actor's device (nvjpeg on CUDA).
    gpu_decode = choose_decoder(job.decode, device, model.backend, model.family) == "gpu"
    summary.device = f"ray:{actors}x{device}"
    summary.provider = f"ray: {actors} {model.backend} actor(s) on {device}"

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours counts captions written, which is what the user waits for
    ctx.print_on_execution_start = False
    items = [{"path": str(p)} for p in todo]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // batch_size, 1000)))
    # A decode task holds one full-size image at a time (~64 MB for large photos) plus its output
    # batch. Declaring that memory also keeps Ray Data from fusing this stage into the model actors
    # (fusion needs identical resource requests), which would decode serially inside the actor
    # instead of on every CPU of the cluster.
    task_memory = 64 * 2**20 + batch_size * size * size * 3
    if gpu_decode:
        ds = ds.map_batches(_read_bytes, batch_size=batch_size, batch_format="numpy", num_cpus=0.5,
                            memory=task_memory)
    else:
        ds = ds.map_batches(_read_and_decode, fn_kwargs={"size": size}, batch_size=batch_size,
                            batch_format="numpy", num_cpus=1, memory=task_memory)
    cpus_per_actor = 1 if device == "cuda" else (job.threads or 1)
    ds = ds.map_batches(
        CaptionActor,
        fn_constructor_kwargs=dict(
            model_path=str(model.path), backend=model.backend, family=model.family, device=device,
            precision=job.precision, compile=job.compile, threads=cpus_per_actor if device == "cpu" else None,
            batch_size=batch_size, size=size, n_labels=len(model.labels), gpu_decode=gpu_decode,
        ),
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=1 if device == "cuda" else 0,
        num_cpus=cpus_per_actor,
        batch_size=batch_size,
        batch_format="numpy",
    )
    progress.start(len(todo))
    first = True
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        if first:  # cluster start, actor start and model load end with the first results
            summary.load_seconds = time.perf_counter() - started
            first = False
        progress.check()
        paths = [Path(str(p)) for p in batch["path"]]
        rows = [None if error else row for row, error in zip(batch["probs"], batch["error"])]
        summary.failed += [(relative_name(p, root), str(error)) for p, error in zip(paths, batch["error"]) if error]
        done, problems = write_captions(model, sink, root, paths, rows)
        summary.done += done
        summary.failed += [(relative_name(p, root), reason) for p, reason in problems]
        progress.advance(len(batch["path"]))


def _onnx_input_size(model_dir: Path, family="wd") -> int:
    import onnxruntime as ort

    from tagloom.tagger.families import get_family

    sess = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    side = get_family(family).input_side(sess.get_inputs()[0].shape)  # where the size is: the family's layout
    if not isinstance(side, int):
        raise TagLoomError(f"{model_dir}: cannot tell the model's input size (no config.json, dynamic ONNX input)")
    return side
