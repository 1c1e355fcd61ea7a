"""Tiny SD1.5 / SDXL diffusers folders built from configs for CPU tests (random weights, no
downloads). The tokenizers are the real CLIP BPE files the pack ships in training/lora/configs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "training" / "lora" / "configs"


def tiny_unet_config(xl: bool = False) -> dict:
    cfg = dict(block_out_channels=(4, 8), layers_per_block=1, sample_size=16,
               down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
               up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=8, norm_num_groups=2,
               attention_head_dim=2)
    if xl:
        cfg.update(cross_attention_dim=16, addition_embed_type="text_time", addition_time_embed_dim=4,
                   projection_class_embeddings_input_dim=6 * 4 + 8, use_linear_projection=True)
    return cfg


def make_tiny_sd(out: Path, xl: bool = False, seed: int = 0) -> Path:
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    UNet2DConditionModel(**tiny_unet_config(xl)).save_pretrained(out / "unet")
    AutoencoderKL(block_out_channels=[4, 8], latent_channels=4, norm_num_groups=2, layers_per_block=1,
                  down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                  sample_size=32).save_pretrained(out / "vae")
    te = dict(hidden_size=8, intermediate_size=16, num_attention_heads=2, num_hidden_layers=2, vocab_size=49408,
              max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=8)
    CLIPTextModel(CLIPTextConfig(**te)).save_pretrained(out / "text_encoder")
    shutil.copytree(CONFIGS / "sd15" / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
    index = {"_class_name": "StableDiffusionXLPipeline" if xl else "StableDiffusionPipeline",
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "DDPMScheduler"]}
    if xl:
        CLIPTextModelWithProjection(CLIPTextConfig(**te)).save_pretrained(out / "text_encoder_2")
        shutil.copytree(CONFIGS / "sdxl" / "tokenizer_2", out / "tokenizer_2", dirs_exist_ok=True)
        index.update(text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                     tokenizer_2=["transformers", "CLIPTokenizer"])
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(out / "scheduler")
    (out / "model_index.json").write_text(json.dumps(index))
    return out


def _vae_ldm_name(path: str, levels: int) -> str:
    """A diffusers AutoencoderKL module path in the original (LDM) checkpoint layout."""
    p = path.split(".")
    resnet = {"conv_shortcut": "nin_shortcut"}
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
    if p[0] in ("quant_conv", "post_quant_conv"):
        return path
    side, rest = p[0], p[1:]
    if rest[0] == "conv_norm_out":
        return f"{side}.norm_out"
    if rest[0] in ("conv_in", "conv_out"):
        return f"{side}.{rest[0]}"
    if rest[0] == "mid_block":
        if rest[1] == "resnets":
            return f"{side}.mid.block_{int(rest[2]) + 1}.{resnet.get(rest[3], rest[3])}"
        return f"{side}.mid.attn_1.{attn[rest[3]]}"
    blocks, up = ("down", False) if rest[0] == "down_blocks" else ("up", True)
    i = int(rest[1])
    level = levels - 1 - i if up else i
    if rest[2] in ("downsamplers", "upsamplers"):
        return f"{side}.{blocks}.{level}.{'upsample' if up else 'downsample'}.conv"
    return f"{side}.{blocks}.{level}.block.{rest[3]}.{resnet.get(rest[4], rest[4])}"


def make_tiny_single_file(folder: Path, out: Path) -> Path:
    """The tiny SD1.5 folder as one original-layout checkpoint (model.diffusion_model.*,
    first_stage_model.*, cond_stage_model.transformer.text_model.*), like the files in ComfyUI's
    models/checkpoints. UNet names come from our own mapping (tagloom.training.lora.kohya.unet_ldm_name)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    te = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    sd = single_file_state(unet, vae, te)
    save_file({k: t.contiguous() for k, t in sd.items()}, str(out))
    return out


def single_file_state(unet, vae, te, dtype=None) -> dict:
    """SD1.5 components -> one original-layout state dict (see make_tiny_single_file)."""
    from tagloom.training.lora.kohya import te_module_path, unet_ldm_name

    sd = {}
    for key, v in unet.state_dict().items():
        module, _, leaf = key.rpartition(".")
        sd[f"model.diffusion_model.{unet_ldm_name(module, unet.config)}.{leaf}"] = v
    levels = len(vae.config.block_out_channels)
    for key, v in vae.state_dict().items():
        module, _, leaf = key.rpartition(".")
        module = module[: -len(".0")] if module.endswith("to_out.0") else module
        if ".attentions." in module and leaf == "weight" and v.dim() == 2:
            v = v[:, :, None, None]  # LDM's VAE attention uses 1x1 convs
        sd[f"first_stage_model.{_vae_ldm_name(module, levels)}.{leaf}"] = v
    for key, v in te.state_dict().items():
        sd[f"cond_stage_model.transformer.{te_module_path(key)}"] = v
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    return sd
