"""ComfyUI nodes for tagging: loader, interrogate, tag filter/format. Thin wrappers over
tagloom.tagger; ids and input names are public interface (never rename or reorder; only append
optional inputs).

- TagLoomTaggerLoader -> TAGLOOM_TAGGER (a handle; the weights live in tagloom.tagger.cache and are
  freed when ComfyUI unloads models, e.g. the "Unload models" button / POST /free).
- TagLoomInterrogate: IMAGE batch -> caption, tags, scores_json, rating (lists: one item per image,
  so a batch of 4 gives 4 captions; downstream nodes run once per item).
- TagLoomTagFilter: a tag string -> filtered/formatted tag string.
"""

from __future__ import annotations

import json

from tagloom import names

from . import _comfy

CATEGORY = "TagLoom/Tagger"
# What a tagger takes on the GPU: EVA-02 Large weights (1.2 GB in float32) plus a batch of 8.
_GPU_ROOM = 3 * 1024**3


def _make_room_on_gpu(handle) -> None:
    """Before a tagger is loaded onto ComfyUI's GPU, ask ComfyUI to make room (nodes/_comfy.py).
    Only when the tagger will run on CUDA: never for the CPU, nor for an ONNX model when
    onnxruntime has no CUDA provider."""
    if handle.device == "cpu" or handle.is_loaded() or _comfy.comfy_gpu() is None:
        return
    if handle.backend != "torch":
        try:
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                return
        except Exception:
            return
    _comfy.make_room(_GPU_ROOM)


def _model_choices() -> list[str]:
    from tagloom.tagger.registry import model_choices

    return model_choices()


class TagLoomTaggerLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (_model_choices(), {"tooltip": "wd-v3 model, JoyTag, or a folder in models/tagloom; downloaded on first use"}),
                "backend": (list(names.BACKENDS), {"default": "auto"}),
                "device": (list(names.DEVICES), {"default": "auto"}),
            },
            "optional": {
                "precision": (list(names.INFERENCE_PRECISIONS), {
                    "default": "fp32",
                    "tooltip": "fp32: as the model was made. int8: ONNX on the CPU with int8 weights (quantized once, "
                               "cached), about 2.5x faster there, scores within a few thousandths. bf16/fp16/auto: "
                               "torch backend on a GPU"}),
            },
        }

    RETURN_TYPES = ("TAGLOOM_TAGGER",)
    RETURN_NAMES = ("tagger",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads a Danbooru tagger (EVA-02 Large by default) on ONNX Runtime or PyTorch."

    def load(self, model, backend="auto", device="auto", precision="fp32"):
        from tagloom.tagger.cache import TaggerHandle

        _comfy.hook_unload()
        device = _comfy.follow_device(device)  # respect ComfyUI's own choice (--cpu on a GPU machine)
        handle = TaggerHandle(model, backend, device, precision)
        _make_room_on_gpu(handle)
        handle.get()  # load now so a missing model fails this node, not the next one
        return (handle,)


class TagLoomInterrogate:
    @classmethod
    def INPUT_TYPES(cls):
        thr = {"min": 0.0, "max": 1.0, "step": 0.01}
        return {
            "required": {
                "tagger": ("TAGLOOM_TAGGER",),
                "image": ("IMAGE",),
                "general_threshold": ("FLOAT", {"default": 0.35, **thr}),
                "character_threshold": ("FLOAT", {"default": 0.75, **thr}),
                "artist_threshold": ("FLOAT", {"default": 0.75, **thr}),
                "mcut_general": ("BOOLEAN", {"default": False}),
                "mcut_character": ("BOOLEAN", {"default": False}),
                "replace_underscores": ("BOOLEAN", {"default": True}),
                "escape_parentheses": ("BOOLEAN", {"default": True}),
                "exclude_tags": ("STRING", {"default": "", "multiline": False}),
                "max_tags": ("INT", {"default": 0, "min": 0, "max": 1000}),
                "trailing_comma": ("BOOLEAN", {"default": False}),
            },
            "optional": {
                "threshold_file": ("STRING", {"default": "", "tooltip": "threshold.json in the model folder, models/tagloom or the input folder; its values win over the threshold inputs above"}),
                "include_tags": ("STRING", {"default": ""}),
                "caption_threshold": ("FLOAT", {"default": 0.35, **thr}),
                "tags_threshold": ("FLOAT", {"default": 0.35, **thr}),
            },
        }

    RETURN_TYPES = ("STRING", "STRING", "STRING", "STRING")
    RETURN_NAMES = ("caption", "tags", "scores_json", "rating")
    OUTPUT_IS_LIST = (True, True, True, True)
    OUTPUT_TOOLTIPS = ("character + general + artist tags, one per image",
                       "general tags, one per image", "all scores as JSON, one per image", "top rating, one per image")
    FUNCTION = "interrogate"
    CATEGORY = CATEGORY
    DESCRIPTION = "Tags every image of the batch; outputs are lists with one string per image."

    def interrogate(self, tagger, image, general_threshold=0.35, character_threshold=0.75, artist_threshold=0.75,
                    mcut_general=False, mcut_character=False, replace_underscores=True, escape_parentheses=True,
                    exclude_tags="", max_tags=0, trailing_comma=False, threshold_file="", include_tags="",
                    caption_threshold=0.35, tags_threshold=0.35):
        from tagloom import config
        from tagloom.tagger import FormatOptions, Thresholds, read_threshold_json
        from tagloom.tagger.preprocess import comfy_image_to_pil
        from tagloom.tagger.thresholds import find_threshold_file

        _comfy.hook_unload()
        _make_room_on_gpu(tagger)  # loaded again after ComfyUI unloaded models
        model = tagger.get()
        thresholds = Thresholds().with_overrides(
            general=general_threshold, character=character_threshold, artist=artist_threshold,
            caption=caption_threshold, tags=tags_threshold, mcut_general=mcut_general, mcut_character=mcut_character,
        )
        if threshold_file and threshold_file.strip():
            import folder_paths

            dirs = [model.model_dir, *config.model_search_dirs(), folder_paths.get_input_directory()]
            thresholds = read_threshold_json(find_threshold_file(threshold_file, dirs), thresholds)
        options = FormatOptions().with_overrides(
            replace_underscores=replace_underscores, escape_parentheses=escape_parentheses,
            exclude=exclude_tags, include=include_tags, max_tags=max_tags, trailing_comma=trailing_comma,
        )
        images = comfy_image_to_pil(image)
        progress = _comfy.ComfyProgress()
        progress.start(len(images))
        results = model.tag_images(images, thresholds, options, progress=progress.callback())  # device's best batch
        captions = [r.caption for r in results]
        tags = [r.tags for r in results]
        scores = [json.dumps({k: v for k, v in r.to_json().items() if k != "file"}, ensure_ascii=False) for r in results]
        ratings = [r.rating or "" for r in results]
        return (captions, tags, scores, ratings)


class TagLoomTagFilter:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "tags": ("STRING", {"forceInput": True}),
                "exclude_tags": ("STRING", {"default": ""}),
                "include_tags": ("STRING", {"default": ""}),
                "replace": ("STRING", {"default": "", "multiline": True,
                                       "tooltip": "one 'old=new' per line (tag names, spaces or underscores)"}),
                "replace_underscores": ("BOOLEAN", {"default": True}),
                "escape_parentheses": ("BOOLEAN", {"default": True}),
                "sort": (["score", "alpha", "none"], {"default": "score", "tooltip": "score keeps the incoming order"}),
                "max_tags": ("INT", {"default": 0, "min": 0, "max": 1000}),
                "trailing_comma": ("BOOLEAN", {"default": False}),
            }
        }

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("tags",)
    FUNCTION = "filter"
    CATEGORY = CATEGORY
    DESCRIPTION = "Exclude, include, replace, escape, sort and limit tags in a comma-separated string."

    def filter(self, tags, exclude_tags="", include_tags="", replace="", replace_underscores=True,
               escape_parentheses=True, sort="score", max_tags=0, trailing_comma=False):
        from tagloom.tagger.formatting import FormatOptions, filter_tag_string

        options = FormatOptions().with_overrides(
            replace_underscores=replace_underscores, escape_parentheses=escape_parentheses, exclude=exclude_tags,
            include=include_tags, sort=sort, max_tags=max_tags, trailing_comma=trailing_comma,
        )
        return (filter_tag_string(tags, options, replace),)


NODE_CLASS_MAPPINGS = {
    "TagLoomTaggerLoader": TagLoomTaggerLoader,
    "TagLoomInterrogate": TagLoomInterrogate,
    "TagLoomTagFilter": TagLoomTagFilter,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TagLoomTaggerLoader": "TagLoom Tagger Loader",
    "TagLoomInterrogate": "TagLoom Interrogate Image",
    "TagLoomTagFilter": "TagLoom Tag Filter",
}
