"""The trainers' GPU-only code paths, exercised on CPU where the same lines run: device choice under
torchrun, bf16/fp16 weights and autocast, validation sharding, resume across precisions. (No GPU is
lent to this project: what only CUDA can run is reasoned about in the commit messages.)"""

from __future__ import annotations

from pathlib import Path

import pytest
torch = pytest.importorskip("torch", reason="needs torch (the dev venv has it; the multi-Python check runs without)")

from tiny_sd import make_tiny_sd, make_tiny_single_file
from train_data import make_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("device")
    make_dataset(root / "ds", 2, size=(48, 24))
    make_dataset(root / "ds", 1, seed=7, size=(301, 257))  # sides bf16 cannot hold exactly
    return {"ds": root / "ds", "sd": make_tiny_sd(root / "sd"), "xl": make_tiny_sd(root / "xl", xl=True)}


def _lora_opts(tiny, out, **kw):
    from tagloom.training.lora.options import LoraOptions

    base = dict(dataset=tiny["ds"], base=str(tiny["sd"]), out=str(out), rank=2, steps=2, batch_size=1, resolution=32,
                bucket_step=8, min_snr_gamma=5.0, noise_offset=0.05, device="cpu")
    base.update(kw)
    return LoraOptions(**base)


def test_cuda_device_without_index_is_the_local_rank():
    """`--device cuda` (and auto) must name this process's GPU: torch.cuda.set_device rejects an
    index-less device, and under torchrun all ranks on cuda:0 would make NCCL fail."""
    from tagloom.errors import TagLoomError
    from tagloom.training.tagger.train import resolve_device

    assert resolve_device("cuda", 3, 4) == torch.device("cuda", 3)
    assert resolve_device("auto", 1, 2) == torch.device("cuda", 1)
    assert resolve_device("cuda:2", 0, 4) == torch.device("cuda", 2)  # an explicit index is kept
    assert resolve_device("auto", 1, 0) == torch.device("cpu")
    assert resolve_device("cpu", 1, 2) == torch.device("cpu")
    with pytest.raises(TagLoomError, match="only 1 CUDA device"):
        resolve_device("auto", 1, 1)  # gpus=2 on a one-GPU machine


def test_validation_shards_cover_each_image_once_and_an_empty_rank_gathers():
    import numpy as np

    from tagloom.training.tagger.data import TaggerDataset
    from tagloom.training.tagger.train import _predict, val_shard

    parts = [val_shard(5, 4, r) for r in range(4)]
    assert sorted(i for p in parts for i in p) == list(range(5))  # no padded duplicates
    assert val_shard(2, 4, 3) == []
    empty = torch.utils.data.DataLoader(TaggerDataset([], [], 7, 56, (0.5,) * 3, (0.5,) * 3), batch_size=2)
    probs, targets = _predict(torch.nn.Linear(1, 7), empty, torch.device("cpu"), "bf16")
    assert probs.shape == targets.shape == (0, 7)
    assert np.concatenate([probs, np.ones((2, 7), np.float32)]).shape == (2, 7)  # what _gather does


def test_vae_is_read_in_float32_whatever_the_unet_dtype(tiny, tmp_path):
    """On CUDA the base loads in bf16; the VAE must not pass through bf16 (its weights would be
    rounded before the trainer upcasts it to encode latents)."""
    from tagloom.training.lora.base import load_base

    ref = load_base(tiny["sd"]).vae.state_dict()
    ckpt = make_tiny_single_file(tiny["sd"], tmp_path / "sd15.safetensors")
    for base in (load_base(tiny["sd"], dtype=torch.bfloat16), load_base(ckpt, dtype=torch.bfloat16, config_dir=tiny["sd"])):
        assert base.unet.dtype == torch.bfloat16 and base.text_encoders[0].dtype == torch.bfloat16
        vae = base.vae.state_dict()
        assert all(vae[k].dtype == torch.float32 and torch.equal(vae[k].reshape(ref[k].shape), ref[k]) for k in ref)


def test_a_base_passed_in_trains_in_the_trainers_weight_dtype(tiny, tmp_path):
    """bench/train.py hands the trainer a base it built itself; its UNet and text encoder must end
    in the trainer's weight dtype (here a bf16 base, fp32 training: it used to fail in the UNet)."""
    from tagloom.training.lora.base import load_base
    from tagloom.training.lora.train import LoraTrainer

    base = load_base(tiny["sd"], dtype=torch.bfloat16)
    tr = LoraTrainer(_lora_opts(tiny, tmp_path / "a.safetensors", steps=1, precision="no"), base=base)
    assert tr.base.unet.dtype == torch.float32 and tr.base.text_encoders[0].dtype == torch.float32
    assert tr.base.vae.dtype == torch.float32
    assert all(p.dtype == torch.float32 for g in tr.optimizer.param_groups for p in g["params"])
    assert tr.train_step() > 0


def test_sdxl_size_conditioning_is_exact_and_samples_decode_in_float32(tiny, tmp_path):
    """Under bf16 autocast (CPU here, CUDA's default) SDXL's time_ids stay float32 (bf16 turns 301
    into 300), and the sample's VAE decode runs outside autocast in float32 (fp16 autocast makes
    SDXL's VAE overflow into a black image)."""
    from tagloom.training.lora.train import LoraTrainer

    tr = LoraTrainer(_lora_opts(tiny, tmp_path / "xl.safetensors", base=str(tiny["xl"]), precision="bf16",
                                sample_prompt="red", sample_steps=1, buckets=False))
    seen = []
    tr.base.unet.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["added_cond_kwargs"]["time_ids"].clone()), with_kwargs=True)
    odd = next(i for i, s in enumerate(tr.samples) if s.original_size == (257, 301))
    tr.batch_loss([odd], torch.Generator().manual_seed(0), ["red"])
    assert seen[-1].dtype == torch.float32 and seen[-1][0, :2].tolist() == [257.0, 301.0]

    decode = []
    tr.base.vae.decoder.conv_in.register_forward_pre_hook(
        lambda m, a: decode.append((a[0].dtype, torch.is_autocast_enabled("cpu"))))
    path = tr.render_sample()
    assert decode == [(torch.float32, False)]
    from PIL import Image

    with Image.open(path) as im:
        assert im.size == (32, 32)


def test_resume_with_fp16_after_a_run_without_it(tiny, tmp_path):
    """A state saved with the GradScaler off holds an empty scaler state; resuming with fp16
    (scaler on) must not fail on it."""
    from tagloom.training.lora.train import LoraTrainer

    out = tmp_path / "r.safetensors"
    LoraTrainer(_lora_opts(tiny, out, precision="no")).train(stop_after=1)
    tr = LoraTrainer(_lora_opts(tiny, out, precision="fp16", resume=True))
    assert tr.scaler.is_enabled() and tr.load_state() and tr.step == 1


def test_text_encoder_gradient_checkpointing_is_active(tiny, tmp_path):
    """transformers skips checkpointing in eval mode (what from_pretrained returns): with
    --gradient-checkpointing and a trained text encoder its layers must really be recomputed."""
    from tagloom.training.lora.train import LoraTrainer

    tr = LoraTrainer(_lora_opts(tiny, tmp_path / "gc.safetensors", text_encoder_lr=1e-3, gradient_checkpointing=True,
                                precision="no"))
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in tr.base.text_encoders[0].modules() if isinstance(m, GradientCheckpointingLayer)]
    calls = []
    for layer in layers:
        inner = layer._gradient_checkpointing_func
        layer._gradient_checkpointing_func = lambda *a, _f=inner, **k: calls.append(1) or _f(*a, **k)
    tr.train_step()
    assert layers and len(calls) == len(layers)  # each encoder layer ran checkpointed once
    te_grads = [p.grad for p in tr.optimizer.param_groups[1]["params"]]
    assert tr.step == 1 and te_grads  # the text encoder's adapters are in the optimizer


def test_auto_mixed_precision_follows_the_gpu_generation(monkeypatch):
    """bf16 only where the GPU has bf16 hardware; fp16 (GradScaler) on older GPUs, where
    torch.cuda.is_bf16_supported() still says True (emulation). The capability query is answered
    by a stand-in: there is no GPU here."""
    import torch

    from tagloom.training.precision import auto_mixed_precision

    assert auto_mixed_precision(torch.device("cpu")) is None
    for capability, expected in (((9, 0), "bf16"), ((8, 0), "bf16"), ((7, 5), "fp16"), ((6, 1), "fp16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert auto_mixed_precision(torch.device("cuda")) == expected
