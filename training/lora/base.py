"""Loading the base model to train on: a single-file checkpoint (ComfyUI's models/checkpoints) or a
diffusers folder. Offline by design: single files are read with ``config=`` one of the folders in
``training/lora/configs`` so nothing is fetched from the hub."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tagloom import config
from tagloom.errors import InputFileError

CONFIGS = Path(__file__).resolve().parent / "configs"
CHECKPOINT_EXTS = {".safetensors", ".ckpt", ".pt", ".pth", ".bin"}


@dataclass
class Base:
    arch: str  # "sd15" | "sdxl"
    unet: object
    vae: object
    text_encoders: list
    tokenizers: list
    noise_scheduler: object
    name: str
    sample_scheduler_config: dict = field(default_factory=dict)


def resolve_checkpoint(name: str) -> Path:
    """A path, or a file name inside ComfyUI's checkpoints folder(s)."""
    p = Path(name).expanduser()
    if p.exists():
        return p
    for folder in config.comfy_folder("checkpoints"):
        if (folder / name).exists():
            return folder / name
    raise InputFileError(name, "base model not found (a checkpoint file, a diffusers folder, or a name in models/checkpoints)")


def detect_arch(path: Path) -> str:
    """sd15 or sdxl from a single-file checkpoint's keys (SDXL has a second text encoder)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
        except Exception as e:
            raise InputFileError(path, f"cannot be read as safetensors: {e}") from e
    else:
        import torch

        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        keys = list(state.get("state_dict", state).keys())
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "sdxl"
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return "sd15"
    raise InputFileError(path, "not an SD1.5 or SDXL checkpoint (no model.diffusion_model.* keys)")


def load_base(name: str | Path, dtype=None, config_dir: str | Path | None = None) -> Base:
    """The base model. ``config_dir`` replaces the shipped config folder for single files (a
    diffusers folder of the same architecture, e.g. for custom or tiny models)."""
    import torch
    from diffusers import DDPMScheduler

    path = resolve_checkpoint(str(name))
    dtype = dtype or torch.float32
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise InputFileError(path, "not a diffusers folder (no model_index.json)")
        return _from_folder(path, dtype)
    arch = detect_arch(path)
    if arch == "sdxl":
        from diffusers import StableDiffusionXLPipeline as Pipe
    else:
        from diffusers import StableDiffusionPipeline as Pipe
    kwargs = {"safety_checker": None, "requires_safety_checker": False} if arch == "sd15" else {}
    cfg_dir = str(config_dir or CONFIGS / arch)
    try:
        # The VAE is always read in float32, whatever ``dtype`` the UNet and text encoders get: the
        # trainer encodes latents in float32, and a VAE read in bf16 and upcast later would have lost
        # its weights' precision (bf16 keeps 8 bits of mantissa).
        if dtype != torch.float32:
            from diffusers import AutoencoderKL

            kwargs["vae"] = AutoencoderKL.from_single_file(str(path), config=cfg_dir, subfolder="vae",
                                                           local_files_only=True, torch_dtype=torch.float32)
        pipe = Pipe.from_single_file(str(path), config=cfg_dir, local_files_only=True,
                                     torch_dtype=dtype, **kwargs)
    except Exception as e:
        raise InputFileError(path, f"cannot be loaded as an {arch} checkpoint: {type(e).__name__}: {e}") from e
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if arch == "sdxl" else [])
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if arch == "sdxl" else [])
    sched_cfg = dict(pipe.scheduler.config)
    return Base(arch, pipe.unet, pipe.vae, encoders, tokenizers, DDPMScheduler.from_config(sched_cfg), path.name, sched_cfg)


def _from_folder(path: Path, dtype) -> Base:
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    index = json.loads((path / "model_index.json").read_text())
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32)  # see load_base
    encoders = [CLIPTextModel.from_pretrained(path, subfolder="text_encoder", torch_dtype=dtype)]
    tokenizers = [CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")]
    arch = "sd15"
    if "text_encoder_2" in index:
        arch = "sdxl"
        encoders.append(CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2", torch_dtype=dtype))
        tokenizers.append(CLIPTokenizer.from_pretrained(path, subfolder="tokenizer_2"))
    sched_cfg = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    return Base(arch, unet, vae, encoders, tokenizers, DDPMScheduler.from_config(sched_cfg), path.name, sched_cfg)
