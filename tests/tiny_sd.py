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
