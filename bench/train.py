"""Training throughput: tagger training img/s and LoRA training steps/s. Prints one table.

    .venv/bin/python bench/train.py                 # CPU: small configs (eva02_tiny @224, tiny SD UNet)
    .venv/bin/python bench/train.py --preset gpu    # CUDA: EVA-02 Large @448 bf16 batch 32 (10,861 classes);
                                                    # SD1.5 LoRA r16 @512 batch 8 on a random-weight SD1.5
                                                    # built from training/lora/configs/sd15
    .venv/bin/python bench/train.py --preset gpu --compile --channels-last

Tagger rows time the trainer's step (tagloom.training.tagger: timm model, autocast, loss, backward, clip,
optimizer) on a fixed synthetic batch, after warm-up: the model's cost without image decoding (the
trainer decodes in DataLoader workers in parallel). LoRA rows time LoraTrainer.train_step (peft
adapters, cached latents, text encoding, min-SNR) on a synthetic dataset, after warm-up.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def bench_tagger(model_name, image_size, batch, precision, device, steps, warmup, num_classes, model_args,
                 compile_=False, channels_last=False, grad_checkpointing=False):
    import torch
    from timm.optim import create_optimizer_v2

    from tagloom.training.tagger.losses import make_loss
    from tagloom.training.tagger.options import TaggerOptions
    from tagloom.training.tagger.train import _autocast, create_network

    _reset_peak(device)
    opts = TaggerOptions(dataset=Path("."), out=Path("."), model_name=model_name, resolution=image_size,
                         model_args=dict(model_args))
    model, _cfg = create_network(opts, num_classes)
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if compile_ else model
    opt = create_optimizer_v2(model, opt="adamw", lr=1e-4, weight_decay=0.05, fused=device.type == "cuda") \
        if device.type == "cuda" else create_optimizer_v2(model, opt="adamw", lr=1e-4, weight_decay=0.05)
    loss_fn = make_loss("bce")
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    y = (torch.rand(batch, num_classes, device=device) < 0.01).float()

    def step():
        with _autocast(device, precision):
            logits = step_model(x)
        loss = loss_fn(logits.float(), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    dt = (time.perf_counter() - t) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return batch / dt, dt, peak


def _reset_peak(device):
    """Each row's peak is its own: without the reset, max_memory_allocated keeps the largest peak of
    every earlier row (the EVA-02 Large rows would show in the LoRA rows)."""
    import gc

    import torch

    if device.type == "cuda":
        gc.collect()  # the previous row's model and optimizer state
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_sd15(device):
    """A random-weight SD1.5 (UNet 860M, VAE, CLIP-L) from the shipped offline configs."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from tagloom.training.lora.base import CONFIGS, Base

    d = CONFIGS / "sd15"
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(d, subfolder="unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(d, subfolder="vae"))
    te = CLIPTextModel(CLIPTextConfig.from_pretrained(d / "text_encoder"))
    tok = CLIPTokenizer.from_pretrained(d / "tokenizer")
    sched = DDPMScheduler.from_config(DDPMScheduler.load_config(d, subfolder="scheduler"))
    return Base("sd15", unet, vae, [te], [tok], sched, "random-sd15")


def bench_lora(preset, device, batch, resolution, rank, steps, warmup, precision, grad_ckpt, tmp):
    from tiny_sd import make_tiny_sd
    from train_data import make_dataset

    from tagloom.training.lora.options import LoraOptions
    from tagloom.training.lora.train import LoraTrainer

    _reset_peak(device)
    ds = Path(tmp) / "lora_ds"
    make_dataset(ds, max(batch, 4), size=(resolution, resolution))
    if preset == "gpu":
        base, label = random_sd15(device), "SD1.5 UNet 860M (random)"
    else:
        from tagloom.training.lora.base import load_base

        base, label = load_base(make_tiny_sd(Path(tmp) / "tiny_sd")), "tiny SD UNet (4,8)"
    opts = LoraOptions(dataset=ds, base="", out=str(Path(tmp) / "bench.safetensors"), rank=rank, batch_size=batch,
                       resolution=resolution, buckets=False, steps=steps + warmup, precision=precision,
                       gradient_checkpointing=grad_ckpt, min_snr_gamma=5.0, device=str(device))
    tr = LoraTrainer(opts, base=base)
    for _ in range(warmup):
        tr.train_step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        tr.train_step()
    _sync(device)
    dt = (time.perf_counter() - t) / steps
    import torch

    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return label, 1 / dt, dt, peak, tr.mixed_precision


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=["cpu", "gpu"], default="gpu" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--skip", choices=["tagger", "lora"], default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    gpu = args.preset == "gpu"
    device = torch.device("cuda" if gpu else "cpu")
    if not gpu:
        torch.set_num_threads(os.cpu_count() or 2)
    rows = []
    if args.skip != "tagger":
        if gpu:
            configs = [("eva02_large_patch14_448", 448, 32, "bf16", 10861, {"global_pool": "avg", "ref_feat_shape": [32, 32]}, False),
                       ("eva02_large_patch14_448", 448, 32, "bf16", 10861, {"global_pool": "avg", "ref_feat_shape": [32, 32]}, True)]
            steps, warmup = args.steps or 10, 3
        else:
            configs = [("eva02_tiny_patch14_224", 224, 8, "bf16", 1000, {}, False),
                       ("eva02_tiny_patch14_224", 64, 8, "fp32", 1000, {}, False)]
            steps, warmup = args.steps or 3, 1
        for name, size, batch, prec, ncls, margs, ckpt in configs:
            ips, dt, peak = bench_tagger(name, size, batch, prec, device, steps, warmup, ncls, margs, args.compile,
                                         args.channels_last, ckpt)
            rows.append(("tagger train", f"{name} @{size}, {ncls} classes{' +ckpt' if ckpt else ''}", batch, prec,
                         f"{ips:.1f} img/s", f"{dt * 1000:.0f} ms", peak))
    if args.skip != "lora":
        with tempfile.TemporaryDirectory() as tmp:
            if gpu:
                configs = [(8, 512, 16, "bf16", False), (8, 512, 16, "bf16", True)]
                steps, warmup = args.steps or 10, 3
            else:
                configs = [(2, 64, 4, "no", False), (2, 64, 4, "no", True)]
                steps, warmup = args.steps or 5, 1
            for batch, res, rank, prec, ckpt in configs:
                label, sps, dt, peak, mp = bench_lora(args.preset, device, batch, res, rank, steps, warmup, prec, ckpt, tmp)
                rows.append(("LoRA train", f"{label} r{rank} @{res}{' +ckpt' if ckpt else ''}", batch, mp,
                             f"{sps:.2f} steps/s ({sps * batch:.1f} img/s)", f"{dt * 1000:.0f} ms", peak))
    dev = torch.cuda.get_device_name(0) if gpu else f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(f"device: {dev}; torch {torch.__version__}{'; torch.compile' if args.compile else ''}")
    print("| what | model | batch | precision | throughput | per step | peak GPU GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for what, model, batch, prec, thr, dt, peak in rows:
        print(f"| {what} | {model} | {batch} | {prec} | {thr} | {dt} | {'-' if peak is None else f'{peak:.1f}'} |")


if __name__ == "__main__":
    main()
