"""kohya-format LoRA files: key writing, metadata, and our own check that every key lands on a
module of the model under ComfyUI's naming.

Key format (what ComfyUI's LoraLoader and the WebUI apply): ``lora_unet_`` / ``lora_te_`` (SDXL:
``lora_te1_``, ``lora_te2_``) + the diffusers/transformers module path with ``.`` -> ``_``, then
``.lora_down.weight`` (peft's lora_A), ``.lora_up.weight`` (lora_B) and ``.alpha`` (a scalar, the
real lora_alpha: the applied scale is alpha / rank). We write these ourselves: diffusers'
converter writes alpha = rank and drops the prefix for un-prefixed peft keys.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct

LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"


def kohya_name(prefix: str, module_path: str) -> str:
    return f"{prefix}_{module_path.replace('.', '_')}"


def te_module_path(path: str) -> str:
    """A text encoder module path as ComfyUI and the WebUI name it: ``text_model.encoder...``.

    transformers 5 dropped the ``text_model`` wrapper from CLIPTextModel (CLIPTextModelWithProjection
    keeps it), while CLIP checkpoints and ComfyUI's LoRA key map use ``text_model.``; without this
    every lora_te key would be "not loaded"."""
    return path if path.startswith("text_model.") else f"text_model.{path}"


def peft_to_kohya(peft_state: dict, prefix: str, alpha: float, dtype=None) -> dict:
    """peft state (``<module>.lora_A.weight`` / ``.lora_B.weight``) -> kohya tensors."""
    import torch

    out = {}
    for key, tensor in peft_state.items():
        if key.endswith(LORA_A):
            module, kind = key[: -len(LORA_A)], "lora_down"
        elif key.endswith(LORA_B):
            module, kind = key[: -len(LORA_B)], "lora_up"
        else:
            continue  # peft may carry other adapter tensors (none for plain LoRA)
        if prefix.startswith("lora_te"):
            module = te_module_path(module)
        name = kohya_name(prefix, module)
        out[f"{name}.{kind}.weight"] = tensor.detach().to("cpu", dtype or tensor.dtype).contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=dtype or torch.float32)
    return out


def check_keys(lora: dict, models: dict[str, object]) -> list[str]:
    """Problems (empty = fine): every key must belong to a known prefix, name a Linear/Conv module
    of that model, and have down/up shapes that fit the module's weight; every module needs down,
    up and alpha. ``models`` maps prefix (``lora_unet``, ``lora_te``...) -> torch module."""
    problems = []
    tables = {}
    for prefix, model in models.items():
        rename = te_module_path if prefix.startswith("lora_te") else (lambda n: n)
        tables[prefix] = {kohya_name(prefix, rename(n)): m for n, m in model.named_modules() if n}
    groups: dict[str, dict[str, object]] = {}
    for key, tensor in lora.items():
        name, _, part = key.partition(".")
        groups.setdefault(name, {})[part] = tensor
    for name, parts in groups.items():
        prefix = next((p for p in tables if name.startswith(p + "_")), None)
        if prefix is None:
            problems.append(f"{name}: unknown prefix")
            continue
        module = tables[prefix].get(name)
        if module is None:
            problems.append(f"{name}: no such module in the {prefix} model")
            continue
        if set(parts) != {"lora_down.weight", "lora_up.weight", "alpha"}:
            problems.append(f"{name}: has {sorted(parts)}, needs lora_down.weight, lora_up.weight, alpha")
            continue
        w = getattr(module, "weight", None)
        if w is None:
            problems.append(f"{name}: module {type(module).__name__} has no weight")
            continue
        down, up = parts["lora_down.weight"], parts["lora_up.weight"]
        rank = down.shape[0]
        if up.shape[0] != w.shape[0] or up.shape[1] != rank:
            problems.append(f"{name}: lora_up {tuple(up.shape)} does not fit weight {tuple(w.shape)} at rank {rank}")
        if down.shape[1] != w.shape[1] or (w.dim() == 4 and tuple(down.shape[2:]) != tuple(w.shape[2:])):
            problems.append(f"{name}: lora_down {tuple(down.shape)} does not fit weight {tuple(w.shape)}")
        if parts["alpha"].numel() != 1:
            problems.append(f"{name}: alpha is not a scalar")
    return problems


# --- the UNet under ComfyUI's (original LDM) naming --------------------------------------------
def unet_ldm_name(path: str, config) -> str | None:
    """The original-checkpoint (LDM) module path of a diffusers UNet module path, which is the
    name ComfyUI's model uses (``diffusion_model.<this>``); None when it has no counterpart.

    Our own mapping from the two layouts' structure: LDM numbers input_blocks / output_blocks
    sequentially (conv_in, then per level its resnet[+attention] pairs and the downsampler).
    """
    nrb = config["layers_per_block"]
    nrb = nrb if isinstance(nrb, int) else nrb[0]
    levels = len(config["block_out_channels"])
    parts = path.split(".")
    resnet = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
              "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}

    def tail(rest: list[str], is_resnet: bool) -> str | None:
        if not is_resnet:
            return ".".join(rest)  # transformer internals keep their names
        if rest and rest[0] in resnet:
            return ".".join([resnet[rest[0]]] + rest[1:])
        return None

    simple = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
              "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
              "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
    joined = ".".join(parts[:2])
    if parts[0] in simple:
        return ".".join([simple[parts[0]]] + parts[1:])
    if joined in simple:
        return ".".join([simple[joined]] + parts[2:])
    if parts[0] == "down_blocks":
        i, kind = int(parts[1]), parts[2]
        if kind == "downsamplers":  # down_blocks.i.downsamplers.0.conv -> input_blocks.N.0.op
            if parts[4:5] != ["conv"]:
                return None
            return ".".join([f"input_blocks.{(i + 1) * (nrb + 1)}.0.op"] + parts[5:])
        j = int(parts[3])
        block = 1 + i * (nrb + 1) + j
        t = tail(parts[4:], kind == "resnets")
        return None if t is None else f"input_blocks.{block}.{0 if kind == 'resnets' else 1}.{t}"
    if parts[0] == "mid_block":
        kind, j = parts[1], int(parts[2])
        index = 1 if kind == "attentions" else (0 if j == 0 else 2)
        t = tail(parts[3:], kind == "resnets")
        return None if t is None else f"middle_block.{index}.{t}"
    if parts[0] == "up_blocks":
        i, kind = int(parts[1]), parts[2]
        has_attn = "CrossAttn" in config["up_block_types"][i]
        if kind == "upsamplers":  # up_blocks.i.upsamplers.0.conv -> output_blocks.N.{1|2}.conv
            block = i * (nrb + 1) + nrb
            return ".".join([f"output_blocks.{block}.{2 if has_attn else 1}"] + parts[4:])
        j = int(parts[3])
        block = i * (nrb + 1) + j
        t = tail(parts[4:], kind == "resnets")
        return None if t is None else f"output_blocks.{block}.{0 if kind == 'resnets' else 1}.{t}"
    return None


def lora_unet_modules_in_ldm(lora: dict, unet) -> tuple[list[str], list[str]]:
    """(mapped LDM module names, unmapped kohya names) for the lora_unet_ keys of a file."""
    table = {kohya_name("lora_unet", n): n for n, _m in unet.named_modules() if n}
    mapped, unmapped = [], []
    for name in sorted({k.partition(".")[0] for k in lora if k.startswith("lora_unet_")}):
        path = table.get(name)
        ldm = unet_ldm_name(path, unet.config) if path else None
        (mapped if ldm else unmapped).append(ldm or name)
    return mapped, unmapped


# --- metadata and hashes -----------------------------------------------------------------------
def model_hash(tensors: dict) -> str:
    """sshs_model_hash as kohya computes it: sha256 over the safetensors data part (header excluded)
    of the file written without metadata, so it does not change when only metadata changes."""
    from safetensors.torch import save

    blob = save(tensors)
    n = struct.unpack("<Q", blob[:8])[0]
    return hashlib.sha256(blob[8 + n :]).hexdigest()


def metadata(**fields) -> dict[str, str]:
    """All values as strings, as safetensors metadata requires (dicts as JSON)."""
    out = {}
    for k, v in fields.items():
        if v is None:
            continue
        out[k] = json.dumps(v) if isinstance(v, (dict, list)) else str(v)
    return out
