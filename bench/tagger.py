"""Tagger throughput: images/s for one image and for batches, per model, backend and device.

    .venv/bin/python bench/tagger.py                       # tiny model (both backends) + EVA-02 Large (torch), CPU (+CUDA if present)
    .venv/bin/python bench/tagger.py --models tiny --batches 1,8,32
    .venv/bin/python bench/tagger.py --models eva02-large --backends torch,onnx --devices cuda --batches 1,64 --precision bf16
    .venv/bin/python bench/tagger.py --models /path/to/model_dir

Models: ``tiny`` (tests/tiny_models.py, 56 px), ``eva02-large`` (the real wd-eva02-large-tagger-v3
architecture built from its config: eva02_large_patch14_448, 10,861 classes, random weights; the ONNX
backend for it needs a ~1.2 GB export first, so it runs only when asked with --backends), or a model
folder. The model step is timed on preprocessed input (the same batch every time); the
``preprocess`` row times load_image + preprocess of a 1536x1024 JPEG on one thread, to compare
decoding cost with the model. Prints one table.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

EVA02_LARGE_CONFIG = {
    "architecture": "eva02_large_patch14_448",
    "num_classes": 10861,
    "model_args": {"global_pool": "avg", "ref_feat_shape": [32, 32]},
    "pretrained_cfg": {"input_size": [3, 448, 448], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                       "interpolation": "bicubic", "crop_pct": 1.0},
}


def build_eva02_large(folder: Path, onnx: bool) -> Path:
    """The real architecture with random weights, written as a model folder."""
    import json

    import torch
    from safetensors.torch import save_file

    from tagloom.tagger.export import export_onnx
    from tagloom.tagger.timm_model import create_model
    from tiny_models import write_selected_tags

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = create_model(EVA02_LARGE_CONFIG).eval()
    # timm starts the head at ~0, so every one of the 10,861 scores would be ~0.5 and every tag
    # "detected": interpreting and writing 10,000-tag captions (~22 ms an image) would then be what
    # a caption benchmark measures. A per-tag bias drawn around logit -6 leaves a few dozen tags an
    # image above the default 0.35 threshold, as a trained tagger does.
    with torch.no_grad():
        model.head.bias.normal_(-6.0, 2.0, generator=torch.Generator().manual_seed(0))
    (folder / "config.json").write_text(json.dumps(EVA02_LARGE_CONFIG))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    tags = [(f"rating_{i}", 9) for i in range(4)] + [(f"tag_{i}", 0) for i in range(EVA02_LARGE_CONFIG["num_classes"] - 4)]
    write_selected_tags(folder / "selected_tags.csv", tags)
    if onnx:
        export_onnx(model, folder / "model.onnx", 448, [0.5] * 3, [0.5] * 3)
    return folder


def time_predict(tagger, batch: int, iters: int, warmup: int = 1) -> float:
    """Median images/s of tagger.predict on a fixed random batch."""
    from PIL import Image

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (tagger.input_size, tagger.input_size, 3), dtype=np.uint8))
    x = np.stack([tagger.preprocess(img)] * batch)
    for _ in range(warmup):
        tagger.predict(x)
    rates = []
    for _ in range(iters):
        t0 = time.perf_counter()
        tagger.predict(x)
        if tagger.device == "cuda" and tagger.backend == "torch":
            import torch

            torch.cuda.synchronize()
        rates.append(batch / (time.perf_counter() - t0))
    return statistics.median(rates)


def time_preprocess(size: int, iters: int = 10) -> float:
    from PIL import Image

    from tagloom.tagger.images import load_image
    from tagloom.tagger.preprocess import wd_preprocess

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (1024, 1536, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    path = Path(tempfile.mkdtemp()) / "bench.jpg"
    path.write_bytes(buf.getvalue())
    t0 = time.perf_counter()
    for _ in range(iters):
        wd_preprocess(load_image(path), size)
    return iters / (time.perf_counter() - t0)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = f"{cpu}, {os.cpu_count()} cores visible"
    try:
        import torch

        if torch.cuda.is_available():
            out += f", GPU {torch.cuda.get_device_name(0)}"
        out += f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        pass
    try:
        import onnxruntime

        out += f", onnxruntime {onnxruntime.__version__}"
    except ImportError:
        pass
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,eva02-large")
    ap.add_argument("--backends", default=None, help="default: onnx,torch for tiny/folders, torch for eva02-large")
    ap.add_argument("--devices", default=None, help="default: cpu, plus cuda when available")
    ap.add_argument("--batches", default=None, help="default: 1,8 (tiny/folders), 1,4 (eva02-large on cpu)")
    ap.add_argument("--iters", type=int, default=None, help="timed repetitions (default 20 tiny, 2 eva02-large cpu)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--workdir", default=None, help="where to build model folders (default: a temp dir)")
    args = ap.parse_args(argv)

    from tagloom.errors import TagLoomError
    from tagloom.tagger import load_tagger

    devices = args.devices.split(",") if args.devices else ["cpu"]
    if not args.devices:
        try:
            import torch

            if torch.cuda.is_available():
                devices.append("cuda")
        except ImportError:
            pass
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tagloom-bench-"))
    rows = []
    print(f"machine: {machine()}", flush=True)
    for model in args.models.split(","):
        big = model == "eva02-large"
        backends = args.backends.split(",") if args.backends else (["torch"] if big else ["onnx", "torch"])
        if model == "tiny":
            from tiny_models import make_tiny_tagger

            folder = work / "tiny" if (work / "tiny" / "model.onnx").is_file() else make_tiny_tagger(work / "tiny")
        elif big:
            folder = work / "eva02-large"
            if not (folder / "model.safetensors").is_file() or ("onnx" in backends and not (folder / "model.onnx").is_file()):
                print("building EVA-02 Large from config (random weights)...", flush=True)
                build_eva02_large(folder, onnx="onnx" in backends)
        else:
            folder = Path(model)
        for device in devices:
            for backend in backends:
                try:
                    tagger = load_tagger(folder, backend=backend, device=device, precision=args.precision)
                except TagLoomError as e:
                    rows.append((model, backend, device, "-", "-", "-", f"skipped: {e}"))
                    continue
                default_batches = "1,4" if big and device == "cpu" else ("1,32" if big else "1,8")
                for b in [int(x) for x in (args.batches or default_batches).split(",")]:
                    iters = args.iters or (2 if big and device == "cpu" else 20)
                    rate = time_predict(tagger, b, iters)
                    rows.append((model, backend, f"{device} ({tagger.provider})", tagger.input_size, b,
                                 f"{rate:.2f}", f"{1000 / rate:.1f}"))
                    print(f"  {rows[-1]}", flush=True)
                tagger.unload()
    rows.append(("preprocess 1536x1024 JPEG", "PIL", "cpu, 1 thread", 448, 1, f"{time_preprocess(448):.1f}",
                 "-"))
    head = ("model", "backend", "device (provider)", "size", "batch", "images/s", "ms/image")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    print()
    print("| " + " | ".join(str(h).ljust(w) for h, w in zip(head, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
