"""The LoRA trainer on CPU with tiny UNet/VAE/CLIP built from configs (tests/tiny_sd.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tiny_sd import CONFIGS, make_tiny_sd, tiny_unet_config
from train_data import make_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    make_dataset(root / "ds" / "2_shapes", 3, size=(48, 24))
    make_dataset(root / "ds", 1, seed=5, size=(24, 48))
    return {"root": root, "sd": make_tiny_sd(root / "sd"), "xl": make_tiny_sd(root / "xl", xl=True), "ds": root / "ds"}


def _opts(tiny, out, **kw):
    from tagloom.training.lora.options import LoraOptions

    base = dict(dataset=tiny["ds"], base=str(tiny["sd"]), out=str(out), rank=4, alpha=2.0, lr=2e-2, text_encoder_lr=1e-2,
                steps=4, batch_size=2, resolution=32, bucket_step=8, shuffle_caption=True, keep_tokens=1,
                caption_dropout=0.2, min_snr_gamma=5.0, noise_offset=0.05, gradient_checkpointing=True,
                save_precision="fp32")
    base.update(kw)
    return LoraOptions(**base)


def _models(trainer):
    models = {"lora_unet": trainer.base.unet}
    models.update(zip(trainer.te_prefixes(), trainer.base.text_encoders))
    return models


def test_shipped_tokenizer_and_configs():
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(CONFIGS / "sd15" / "tokenizer")
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]  # CLIP's own ids
    assert tok.model_max_length == 77 and len(tok) == 49408
    assert CLIPTokenizer.from_pretrained(CONFIGS / "sdxl" / "tokenizer_2").pad_token == "!"
    cfg = UNet2DConditionModel.load_config(CONFIGS / "sd15", subfolder="unet")
    with init_empty_weights():  # no memory: parameters on the meta device
        unet = UNet2DConditionModel.from_config(cfg)
    assert sum(p.numel() for p in unet.parameters()) == pytest.approx(859.52e6, rel=1e-3)  # SD1.5's UNet
    xl = UNet2DConditionModel.load_config(CONFIGS / "sdxl", subfolder="unet")
    assert xl["cross_attention_dim"] == 2048 and xl["projection_class_embeddings_input_dim"] == 2816


def test_tokenizer_files_regenerate_identically():
    import importlib.util

    if importlib.util.find_spec("clip") is None:
        pytest.skip("clip-anytorch (the BPE source) not installed")
    from tagloom.training.lora.make_configs import clip_bpe_files, find_bpe

    vocab, merges = clip_bpe_files(find_bpe())
    assert json.loads((CONFIGS / "sd15" / "tokenizer" / "vocab.json").read_text()) == vocab
    assert (CONFIGS / "sd15" / "tokenizer" / "merges.txt").read_text().splitlines()[1:] == merges


@pytest.mark.parametrize("xl", [False, True])
def test_unet_ldm_mapping_agrees_with_diffusers_converter(xl):
    """Our diffusers -> LDM (ComfyUI) name mapping, checked against an independent implementation:
    an LDM-layout state dict written with our names converts back to the very same UNet weights."""
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from tagloom.training.lora.kohya import unet_ldm_name

    unet = UNet2DConditionModel(**tiny_unet_config(xl))
    ours = unet.state_dict()
    ldm = {}
    for key, value in ours.items():
        module, _, leaf = key.rpartition(".")
        name = unet_ldm_name(module, unet.config)
        assert name is not None, key
        ldm[f"model.diffusion_model.{name}.{leaf}"] = value
    back = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    assert set(back) == set(ours)
    for key in ours:
        assert torch.equal(back[key].reshape(ours[key].shape), ours[key]), key


def test_lora_trains_resumes_exactly_and_keys_map(tiny, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from tagloom.training.lora.kohya import check_keys, lora_unet_modules_in_ldm
    from tagloom.training.lora.train import LoraTrainer

    full = LoraTrainer(_opts(tiny, tmp_path / "full.safetensors"))
    assert {s.bucket for s in full.samples} == {(40, 24), (24, 40)}  # aspect-ratio buckets
    before = full.fixed_loss()
    path = full.train()
    after = full.fixed_loss()
    assert after < before

    part = LoraTrainer(_opts(tiny, tmp_path / "part.safetensors"))
    part.train(stop_after=2)
    assert (tmp_path / ".part.tagloom-state" / "state.tagloom").is_file()
    resumed = LoraTrainer(_opts(tiny, tmp_path / "part.safetensors", resume=True))  # a fresh process would do the same
    assert resumed.load_state() and resumed.step == 2
    resumed.opts.resume = False
    resumed.train()
    a, b = load_file(str(path)), load_file(str(tmp_path / "part.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k].numpy(), b[k].numpy()), k

    # every key names a module of the trained model under ComfyUI's naming, with fitting shapes
    assert check_keys(a, _models(full)) == []
    mapped, unmapped = lora_unet_modules_in_ldm(a, full.base.unet)
    assert not unmapped and len(mapped) == 48  # 4 transformers x 12 linear/conv modules
    assert any(m.startswith("input_blocks.3.1.transformer_blocks.0.attn1.to_q") for m in mapped)
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj.") for k in a)
    assert all(float(a[k]) == 2.0 for k in a if k.endswith(".alpha"))
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in a)
    assert any(float(np.abs(a[k].numpy()).max()) > 0 for k in a if k.endswith("lora_up.weight"))  # not a no-op
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "4"
    assert meta["ss_network_alpha"] == "2.0" and meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_steps"] == "4" and meta["ss_num_train_images"] == "7"  # 3 images x2 repeats + 1
    assert json.loads(meta["ss_tag_frequency"])["2_shapes"]["general"] == 3
    assert len(meta["sshs_model_hash"]) == 64

    # a mangled file is caught by the check (names and shapes)
    bad = dict(a)
    k = next(k for k in a if k.endswith("lora_up.weight"))
    bad[k] = a[k][:, :2]
    bad["lora_unet_down_blocks_9_nope.alpha"] = a[k.replace("lora_up.weight", "alpha")]
    problems = check_keys(bad, _models(full))
    assert len(problems) == 2


def test_sdxl_lora_keys_and_sample(tiny, tmp_path):
    from safetensors.torch import load_file

    from tagloom.training.lora.kohya import check_keys, lora_unet_modules_in_ldm
    from tagloom.training.lora.train import LoraTrainer

    tr = LoraTrainer(_opts(tiny, tmp_path / "xl", base=str(tiny["xl"]), steps=1, gradient_checkpointing=False,
                           cache_latents="disk", sample_prompt="red, circle", sample_every=1, sample_steps=2))
    path = tr.train()
    assert path == tmp_path / "xl.safetensors"
    sd = load_file(str(path))
    assert check_keys(sd, _models(tr)) == []
    assert any(k.startswith("lora_te1_text_model_encoder_") for k in sd)
    assert any(k.startswith("lora_te2_text_model_encoder_") for k in sd)
    assert not lora_unet_modules_in_ldm(sd, tr.base.unet)[1]
    assert (tmp_path / "xl_samples" / "step_000001.png").is_file()
    assert (tmp_path / ".xl.tagloom-state" / "latents.tagloom").is_file()


def test_output_names_and_bad_base(tmp_path, monkeypatch):
    """A bare --out name lands in the LoRA folder (ComfyUI's models/loras, else TAGLOOM_HOME/loras);
    a missing base is a clear error. (The node test runs `tagloom train lora` as a real child.)"""
    from tagloom.errors import InputFileError
    from tagloom.training.lora.base import load_base
    from tagloom.training.lora.train import output_path, state_dir

    monkeypatch.setenv("TAGLOOM_HOME", str(tmp_path / "home"))
    assert output_path("mine") == tmp_path / "home" / "loras" / "mine.safetensors"
    assert output_path(str(tmp_path / "x" / "a.safetensors")) == tmp_path / "x" / "a.safetensors"
    assert state_dir(tmp_path / "a.safetensors").name == ".a.tagloom-state"
    with pytest.raises(InputFileError, match="base model not found"):
        load_base(str(tmp_path / "nope.safetensors"))
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(InputFileError, match="bad.safetensors"):
        load_base(str(tmp_path / "bad.safetensors"))


def test_single_file_checkpoint_loads_offline(tiny, tmp_path):
    """A checkpoint in the original single-file layout (what ComfyUI's models/checkpoints holds)
    loads through diffusers' from_single_file with a local config folder, no hub access, and gives
    the very weights it was written from."""
    import torch

    from tiny_sd import make_tiny_single_file
    from tagloom.training.lora.base import detect_arch, load_base

    ckpt = make_tiny_single_file(tiny["sd"], tmp_path / "tiny_sd15.safetensors")
    assert detect_arch(ckpt) == "sd15"
    base = load_base(ckpt, config_dir=tiny["sd"])
    ref = load_base(tiny["sd"])
    for name in ("unet", "vae"):
        a, r = getattr(base, name).state_dict(), getattr(ref, name).state_dict()
        assert set(a) == set(r)
        assert all(torch.equal(a[k].reshape(r[k].shape), r[k]) for k in r), name
    a, r = base.text_encoders[0].state_dict(), ref.text_encoders[0].state_dict()
    assert all(torch.equal(a[k], r[k]) for k in r)
