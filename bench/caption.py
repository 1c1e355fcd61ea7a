"""Captioning a folder: the naive per-image float32 path against the fast pipeline, in one run.

    .venv/bin/python bench/caption.py                               # tiny model, 200 JPEGs of 1.5 MP, CPU
    .venv/bin/python bench/caption.py --model eva02-large --images 8 --backend torch
    .venv/bin/python bench/caption.py --model eva02-large --images 2000 --device cuda --fast "gpu-bf16,gpu-bf16-compile"
    .venv/bin/python bench/caption.py --model /path/to/wd-eva02-large-tagger-v3

Writes N synthetic JPEGs of realistic size (photo-like gradients + noise, 1.5 MP by default, mixed
aspect ratios) into a temporary folder, then times end to end, from JPEG files on disk to caption
files written:

- ``naive``: what a per-image tagger node does: load_tagger (float32), then for each file
  load + preprocess + predict(batch of 1) + interpret + write, one after the other;
- the fast configurations (``--fast``, comma-separated), each a ``tagloom caption`` job:
  ``cpu`` (thread-pool decoding on every core, batches, tuned ONNX Runtime), ``cpu-process``
  (process pool), ``gpu-fp32`` / ``gpu-bf16`` / ``gpu-bf16-compile`` (CUDA: nvjpeg decoding, torch
  backend, bf16 weights, torch.compile).

Model: ``tiny`` (tests/tiny_models.py at 448 px: decoding dominates, like the real model on a GPU),
``eva02-large`` (the real wd-eva02-large-tagger-v3 architecture from its config, random weights,
10,861 labels; torch backend unless --backend onnx, which needs a 1.2 GB export first) or a folder.
Prints one table: images/s and the ratio to the naive path.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def _bench_tagger_module():
    """bench/tagger.py (machine description, EVA-02 Large builder), loaded by path."""
    spec = importlib.util.spec_from_file_location("bench_tagger", REPO / "bench" / "tagger.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_jpegs(folder: Path, n: int, megapixels: float, seed: int = 0) -> list[Path]:
    """N photo-like JPEGs (quality 90) of about `megapixels`, aspect ratios 2:3, 1:1, 3:2, 4:5."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    aspects = [(2, 3), (1, 1), (3, 2), (4, 5)]
    rng = np.random.default_rng(seed)
    # A few distinct base images, re-noised per file: realistic entropy without minutes of numpy.
    bases = {}
    for a, b in aspects:
        w = int(round((megapixels * 1e6 * a / b) ** 0.5))
        h = int(round(w * b / a))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([(np.sin(xx / (37 + 11 * c)) + np.cos(yy / (53 - 7 * c))) * 60 + 128 for c in range(3)], -1)
        bases[(a, b)] = base

    def one(i):
        base = bases[aspects[i % len(aspects)]]
        noise = rng.normal(0, 18, size=(base.shape[0] // 4 + 1, base.shape[1] // 4 + 1, 3)).astype(np.float32)
        noise = np.repeat(np.repeat(noise, 4, 0), 4, 1)[: base.shape[0], : base.shape[1]]
        img = np.clip(base + noise + (i * 7 % 50), 0, 255).astype(np.uint8)
        path = folder / f"img{i:05d}.jpg"
        Image.fromarray(img).save(path, quality=90)
        return path

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return list(pool.map(one, range(n)))


def make_model(name: str, workdir: Path, backend: str) -> Path:
    if name == "tiny":
        from tiny_models import make_tiny_tagger

        return make_tiny_tagger(workdir / "tiny448", image_size=448, onnx=backend != "torch")
    if name == "eva02-large":
        return _bench_tagger_module().build_eva02_large(workdir / "eva02-large", onnx=backend == "onnx")
    path = Path(name)
    if not path.is_dir():
        raise SystemExit(f"--model: {name} is neither tiny, eva02-large nor a folder")
    return path


def run_naive(model: Path, images: list[Path], backend: str, device: str) -> tuple[float, str]:
    """Per-image float32, as the single-image tagger nodes do today. Returns (images/s, what ran)."""
    from tagloom.caption.files import atomic_write_text
    from tagloom.tagger import load_tagger

    tagger = load_tagger(model, backend=backend, device=device, precision="fp32")
    tagger.predict(tagger.preprocess_file(images[0])[None])  # warm-up, as the fast path's first batch
    t0 = time.perf_counter()
    for path in images:
        res = tagger.interpret(tagger.predict(tagger.preprocess_file(path)[None])[0])
        atomic_write_text(path.with_suffix(".txt"), res.tags)
    elapsed = time.perf_counter() - t0
    ran = f"{tagger.backend}: {tagger.provider}"  # e.g. onnx: CUDAExecutionProvider, torch: torch:cuda
    tagger.unload()
    return len(images) / elapsed, ran


FAST = {
    "cpu": dict(device="cpu", decode="cpu", decode_mode="thread"),
    "cpu-process": dict(device="cpu", decode="cpu", decode_mode="process"),
    "gpu-fp32": dict(device="cuda", decode="gpu", precision="fp32"),
    "gpu-bf16": dict(device="cuda", decode="gpu", precision="bf16"),
    "gpu-bf16-compile": dict(device="cuda", decode="gpu", precision="bf16", compile=True),
}


def run_fast(model: Path, folder: Path, n: int, config: str, backend: str, batch_size: int) -> tuple[float, str]:
    """A whole `tagloom caption` job (txt, overwrite). images/s once the model is loaded (the job's
    summary excludes load time, which includes torch.compile: TorchEngine compiles while loading).
    On CUDA a first job on one batch warms up the CUDA context, cuDNN and inductor's on-disk caches,
    so the timed job's load is short; its images/s never includes compiling either way."""
    from tagloom.caption import CaptionJob, ModelChoice, run_caption

    opts = dict(FAST[config])
    if opts["device"] == "cuda" and backend == "auto":
        backend = "torch"
    choice = ModelChoice(model=str(model), backend=backend)
    if opts["device"] == "cuda":  # CUDA context, cuDNN autotuning, torch.compile: once, before timing
        warm = folder.parent / "warmup"
        if not warm.exists():
            warm.mkdir()
            for p in sorted(folder.glob("*.jpg"))[:batch_size]:
                shutil.copy(p, warm / p.name)
        run_caption(CaptionJob(warm, choice, overwrite=True, batch_size=batch_size, **opts))
    summary = run_caption(CaptionJob(folder, choice, overwrite=True, batch_size=batch_size, **opts))
    assert summary.done == n and not summary.failed, summary.text()
    return summary.images_per_second, summary.provider


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="tiny | eva02-large | a model folder")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--megapixels", type=float, default=1.5)
    ap.add_argument("--backend", default="auto", choices=["auto", "onnx", "torch"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device of the naive path")
    ap.add_argument("--fast", default=None, help=f"fast configurations, comma-separated: {', '.join(FAST)} "
                    "(default: cpu,cpu-process on CPU; gpu-fp32,gpu-bf16,gpu-bf16-compile on CUDA)")
    ap.add_argument("--batch-size", type=int, default=0, help="0: 16 on CPU, 64 on CUDA")
    ap.add_argument("--naive-images", type=int, default=500,
                    help="time the naive path on the first N images only (its rate is steady; at ~35 img/s "
                    "on an H100, 4,000 images would take two minutes of the GPU's time)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args(argv)
    backend = args.backend
    if args.model == "eva02-large" and backend == "auto":
        backend = "torch"  # the ONNX export of the large model takes minutes: only when asked
    fast = (args.fast or ("gpu-fp32,gpu-bf16,gpu-bf16-compile" if args.device == "cuda" else "cpu,cpu-process")).split(",")
    batch_size = args.batch_size or (64 if args.device == "cuda" else 16)
    work = Path(tempfile.mkdtemp(prefix="tagloom-bench-caption-"))
    os.environ.setdefault("TAGLOOM_HOME", str(work / "home"))
    bt = _bench_tagger_module()
    print(f"machine: {bt.machine()}", flush=True)
    try:
        t0 = time.perf_counter()
        model = make_model(args.model, work, backend)
        images = write_jpegs(work / "images", args.images, args.megapixels)
        size_mb = sum(p.stat().st_size for p in images) / len(images) / 1e6
        print(f"model {args.model} ({model}), {len(images)} JPEGs of {args.megapixels} MP (~{size_mb:.2f} MB each); "
              f"setup {time.perf_counter() - t0:.0f} s", flush=True)
        rows = []
        naive_n = min(len(images), args.naive_images) if args.naive_images > 0 else len(images)
        naive, naive_engine = run_naive(model, images[:naive_n], backend, args.device)
        rows.append((f"naive: per image, float32, batch 1 ({naive_n} images)", naive_engine, naive, 1.0))
        for config in fast:
            ips, provider = run_fast(model, work / "images", len(images), config.strip(), backend, batch_size)
            rows.append((f"fast: {config.strip()}, batch {batch_size}", provider, ips, ips / naive))
        print()
        print("| path | engine | images/s | s/image | × naive |")
        print("| --- | --- | ---: | ---: | ---: |")
        for name, engine, ips, ratio in rows:
            print(f"| {name} | {engine} | {ips:.3g} | {1 / ips:.3g} | {ratio:.2f} |")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
