"""Write a random-weight, full-size SD1.5 checkpoint (UNet 860M, VAE, CLIP-L; original single-file
layout, fp16, ~2.1 GB) from the shipped offline configs, for proving LoRA training in a real ComfyUI
(docs/training.md: "Train a LoRA in the ComfyUI harness"). Nothing is downloaded.

    .venv/bin/python tests/make_random_sd15.py ComfyUI/models/checkpoints/v1-5-pruned-emaonly.safetensors
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(out: str) -> None:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from tiny_sd import single_file_state
    from tagloom.training.lora.base import CONFIGS

    torch.manual_seed(0)
    d = CONFIGS / "sd15"
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(d, subfolder="unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(d, subfolder="vae"))
    te = CLIPTextModel(CLIPTextConfig.from_pretrained(d / "text_encoder"))
    sd = single_file_state(unet, vae, te, dtype=torch.float16)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: t.contiguous() for k, t in sd.items()}, out)
    print(f"{out}: {sum(t.numel() for t in sd.values()) / 1e6:.0f}M parameters")


if __name__ == "__main__":
    main(sys.argv[1])
