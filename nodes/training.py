"""ComfyUI nodes for training (thin wrappers; the work is in training/ and runs in a child process).

- TagLoomTrain: starts `tagloom train tagger|lora` as a child process (after freeing ComfyUI's
  models), shows progress and loss, Cancel stops the child, a failure fails the node; returns the
  output path.
- TagLoomTrainedTaggerLoader: lists taggers our trainer wrote (folders in models/tagloom with a
  metrics.json) -> TAGLOOM_TAGGER for TagLoomInterrogate.
- TagLoomTrainedLoraLoader: a LoRA from models/loras applied to MODEL/CLIP like ComfyUI's
  LoraLoader, plus its file name (for a LoraLoader whose lora_name widget is turned into an input).
"""

from __future__ import annotations

import json
import logging
import re
import shlex
from pathlib import Path

from tagloom import names, workflow_paths

from . import _comfy

CATEGORY = "TagLoom/Training"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,127}$")


def _checkpoints() -> list[str]:
    try:
        import folder_paths

        return folder_paths.get_filename_list("checkpoints")
    except Exception:
        return []


def _loras() -> list[str]:
    try:
        import folder_paths

        return [n for n in folder_paths.get_filename_list("loras") if n.endswith(".safetensors")]
    except Exception:
        return []


def trained_taggers() -> list[str]:
    from tagloom import config

    out = []
    for folder in config.model_search_dirs():
        if folder.is_dir():
            out += sorted(p.name for p in folder.iterdir() if (p / "metrics.json").is_file() and (p / "config.json").is_file())
    return out


def _check_name(name: str) -> str:
    from tagloom.errors import TagLoomError

    name = name.strip()
    if not _NAME.match(name) or ".." in name:
        raise TagLoomError(f"output_name {name!r}: use a plain name (letters, digits, . _ - space), no folders")
    return name


def build_args(mode, dataset, output_name, base_model, epochs, steps, batch_size, learning_rate, resolution,
               rank, model_name, resume, extra_args) -> tuple[list[str], Path]:
    """The child's command line and the output path. Tagger folders go to models/tagloom/<name>,
    LoRAs to models/loras/<name>.safetensors."""
    from tagloom import config
    from tagloom.errors import InputFileError, TagLoomError
    from tagloom.options import flag
    from tagloom.training.lora.train import output_path

    name = _check_name(output_name)
    # a shared workflow may train only on a folder of input/, output/ or the workflow_roots setting
    ds = workflow_paths.data_folder(dataset, "dataset folder", " (images with same-named .txt captions)")
    extra = shlex.split(extra_args or "")
    if mode == "tagger":
        out = config.models_dir() / name
        from tagloom.training.tagger.options import TaggerOptions as T

        args = ["tagger", str(ds), flag(T, "out"), str(out), flag(T, "model_name"), model_name,
                flag(T, "epochs"), str(epochs), flag(T, "batch_size"), str(batch_size), flag(T, "lr"), str(learning_rate)]
        if resolution:
            args += [flag(T, "resolution"), str(resolution)]
    elif mode == "lora":
        if not base_model:
            raise TagLoomError("base_model: choose a checkpoint from models/checkpoints to train a LoRA on")
        out = output_path(name)
        from tagloom.training.lora.base import resolve_checkpoint

        from tagloom.training.lora.options import LoraOptions as L

        args = ["lora", str(ds), flag(L, "base"), str(resolve_checkpoint(base_model)), flag(L, "out"), str(out),
                flag(L, "rank"), str(rank), flag(L, "epochs"), str(epochs), flag(L, "batch_size"), str(batch_size),
                flag(L, "lr"), str(learning_rate), flag(L, "resolution"), str(resolution or 512)]
        if steps:
            args += [flag(L, "steps"), str(steps)]
    else:
        raise TagLoomError(f"mode {mode!r}: tagger or lora")
    if resume:
        args.append("--resume")
    _refuse_protected(extra)
    # The node's own flags come after extra_args: argparse keeps the last value of a repeated option,
    # so nothing in a shared workflow's extra_args can move the output or the base model.
    return args[:2] + extra + args[2:], out


# Flags only the node sets: where the result is written and what it is trained from.
_PROTECTED = ("--out", "--base")


def _refuse_protected(extra: list[str]) -> None:
    from tagloom.errors import TagLoomError

    for token in extra:
        name = token.split("=", 1)[0]
        # argparse also accepts unambiguous abbreviations (--ou for --out)
        if name.startswith("--") and len(name) > 2 and any(p.startswith(name) for p in _PROTECTED):
            raise TagLoomError(f"extra_args: {name} is set by the node (output_name, base_model), not by extra_args")


class TagLoomTrain:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "mode": (["lora", "tagger"], {"default": "lora"}),
                "dataset": ("STRING", {"default": "", "tooltip": "folder of images + .txt captions (absolute, or inside ComfyUI's input folder)"}),
                "output_name": ("STRING", {"default": "my_lora", "tooltip": "LoRA: models/loras/<name>.safetensors; tagger: models/tagloom/<name>"}),
                "base_model": ([""] + _checkpoints(), {"default": "", "tooltip": "LoRA only: the checkpoint to train on"}),
                "epochs": ("INT", {"default": 10, "min": 1, "max": 10000}),
                "steps": ("INT", {"default": 0, "min": 0, "max": 1000000, "tooltip": "LoRA: total steps (0 = use epochs)"}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 1024}),
                "learning_rate": ("FLOAT", {"default": 1e-4, "min": 0.0, "max": 1.0, "step": 1e-6}),
                "resolution": ("INT", {"default": 512, "min": 0, "max": 4096, "step": 8, "tooltip": "LoRA resolution / tagger image size (0 = the model's)"}),
                "rank": ("INT", {"default": 16, "min": 1, "max": 1024}),
                "tagger_model_name": ("STRING", {"default": "eva02_large_patch14_448", "tooltip": "tagger: any timm model name"}),
                "resume": ("BOOLEAN", {"default": False}),
            },
            "optional": {
                "extra_args": ("STRING", {"default": "", "multiline": True, "tooltip": "more `tagloom train` options, e.g. --min-snr-gamma 5 --shuffle-caption"}),
                "gpus": ("INT", {"default": 1, "min": 1, "max": 64}),
            },
        }

    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("output_path", "log")
    FUNCTION = "train"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    DESCRIPTION = "Trains a LoRA or a tagger in a separate process, with progress, loss and Cancel."

    def train(self, mode, dataset, output_name, base_model, epochs, steps, batch_size, learning_rate, resolution,
              rank, tagger_model_name, resume, extra_args="", gpus=1):
        from tagloom.training.launcher import TrainingRun

        from tagloom.errors import TagLoomError

        if mode == "lora" and int(gpus) > 1:
            # the LoRA trainer is single-process: N copies would train the same file N times
            raise TagLoomError("gpus: LoRA training runs on one GPU; several GPUs are for the tagger trainer")
        args, out = build_args(mode, dataset, output_name, base_model, epochs, steps, batch_size, learning_rate,
                               resolution, rank, tagger_model_name, resume, extra_args)
        _comfy.free_everything()  # the child needs the GPU memory ComfyUI's models (and ours) hold
        progress = _comfy.ComfyProgress()
        progress.start(1)
        state = {"loss": None}

        def on_progress(event):
            if "total" in event and "step" in event:
                progress.update(int(event["step"]), int(event["total"]) or 1)
            if event.get("loss") is not None:
                state["loss"] = event["loss"]
            if "step" in event and event.get("loss") is not None:
                _comfy.send("tagloom.train", {"node": "TagLoomTrain", "mode": mode, **event})
            if event.get("event") == "epoch":
                logging.info("TagLoom train: %s", json.dumps(event))

        run = TrainingRun(args, gpus=int(gpus))
        logging.info("TagLoom train: %s", " ".join(run.argv))
        run.follow(on_progress=on_progress, check_cancel=progress.check,
                   on_line=lambda line: logging.info("TagLoom train: %s", line))
        log = "\n".join(list(run.lines)[-50:])
        return {"ui": {"text": [f"{out} (last loss {state['loss']})"]}, "result": (str(out), log)}


class TagLoomTrainedTaggerLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                # "" first, always: a shared train-then-load workflow links `path` and leaves this
                # empty, and ComfyUI refuses a prompt whose combo value is not among the choices.
                "model": ([""] + trained_taggers(), {"tooltip": "taggers trained with TagLoom (models/tagloom); "
                                                      "empty = the linked path"}),
                "backend": (list(names.BACKENDS), {"default": "auto"}),
                "device": (list(names.DEVICES), {"default": "auto"}),
            },
            "optional": {"path": ("STRING", {"default": "", "forceInput": True, "tooltip": "e.g. TagLoomTrain's output_path"})},
        }

    RETURN_TYPES = ("TAGLOOM_TAGGER", "STRING")
    RETURN_NAMES = ("tagger", "metrics")
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, model, backend="auto", device="auto", path=""):
        from tagloom import config
        from tagloom.errors import InputFileError
        from tagloom.tagger.cache import TaggerHandle

        if not path and not model:
            raise InputFileError("model", "choose a trained tagger, or link a path (TagLoomTrain's output_path)")
        folder = Path(path) if path else None
        if folder is None:
            folder = next((d / model for d in config.model_search_dirs() if (d / model / "config.json").is_file()), None)
        if folder is None or not folder.is_dir():
            raise InputFileError(path or model, "no trained tagger folder of that name in models/tagloom")
        folder = workflow_paths.model_folder(folder, config.model_search_dirs(), "models/tagloom")
        handle = TaggerHandle(str(folder), backend, device)
        handle.get()
        metrics = (folder / "metrics.json").read_text() if (folder / "metrics.json").is_file() else "{}"
        best = json.loads(metrics).get("best", {})
        summary = json.dumps({k: best.get(k) for k in ("epoch", "macro_f1", "map", "threshold", "metric")})
        return (handle, summary)


class TagLoomTrainedLoraLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "clip": ("CLIP",),
                "lora_name": ([""] + _loras(), {"tooltip": "a LoRA in models/loras; empty = the linked path "
                                                  "(a workflow that trains it first names no file that exists yet)"}),
                "strength_model": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}),
                "strength_clip": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}),
            },
            "optional": {"path": ("STRING", {"default": "", "forceInput": True, "tooltip": "e.g. TagLoomTrain's output_path"})},
        }

    RETURN_TYPES = ("MODEL", "CLIP", "STRING")
    RETURN_NAMES = ("model", "clip", "lora_name")
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, model, clip, lora_name, strength_model=1.0, strength_clip=1.0, path=""):
        from tagloom.errors import InputFileError

        if not path and not lora_name:
            raise InputFileError("lora_name", "choose a LoRA, or link a path (TagLoomTrain's output_path)")
        import comfy.sd
        import comfy.utils
        import folder_paths

        if path:
            roots = [Path(r).resolve() for r in folder_paths.get_folder_paths("loras")]
            p = workflow_paths.model_folder(path, roots, "models/loras")
            lora_name = p.relative_to(next(r for r in roots if p.is_relative_to(r))).as_posix()
        full = folder_paths.get_full_path("loras", lora_name)
        if not full:
            raise InputFileError(lora_name, "not found in models/loras")
        lora = comfy.utils.load_torch_file(full, safe_load=True)
        model, clip = comfy.sd.load_lora_for_models(model, clip, lora, strength_model, strength_clip)
        return (model, clip, lora_name)


NODE_CLASS_MAPPINGS = {
    "TagLoomTrain": TagLoomTrain,
    "TagLoomTrainedTaggerLoader": TagLoomTrainedTaggerLoader,
    "TagLoomTrainedLoraLoader": TagLoomTrainedLoraLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TagLoomTrain": "TagLoom Train (LoRA / tagger)",
    "TagLoomTrainedTaggerLoader": "TagLoom Trained Tagger Loader",
    "TagLoomTrainedLoraLoader": "TagLoom Trained LoRA Loader",
}
