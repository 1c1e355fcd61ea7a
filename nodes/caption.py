"""ComfyUI node: caption a whole folder (a thin wrapper over tagloom.caption.run_caption).

TagLoomCaptionFolder writes a caption beside every image of a folder inside ComfyUI's input/output
folder (or a root the user allowed, see tagloom.caption.folders), with progress in the UI and
Cancel. Re-running it continues where it stopped. Node id and input names are public interface.
"""

from __future__ import annotations

from tagloom import names

from . import _comfy

CATEGORY = "TagLoom/Tagger"


def _model_choices() -> list[str]:
    from tagloom.tagger.registry import model_choices

    return model_choices()


class TagLoomCaptionFolder:
    @classmethod
    def INPUT_TYPES(cls):
        thr = {"min": 0.0, "max": 1.0, "step": 0.01}
        return {
            "required": {
                "folder": ("STRING", {"default": "", "tooltip": "a folder inside ComfyUI's input (relative names) or output "
                                      "folder, or in the caption_roots setting"}),
                "model": (_model_choices(), {"tooltip": "wd-v3 model, JoyTag, or a folder in models/tagloom"}),
                "format": (["txt", "json", "jsonl"], {"default": "txt", "tooltip": "txt: tags beside each image (kohya); "
                                                      "json: all scores beside each image; jsonl: one captions.jsonl in the folder"}),
                "overwrite": ("BOOLEAN", {"default": False, "tooltip": "off: keep existing captions and continue an interrupted run"}),
                "recursive": ("BOOLEAN", {"default": False}),
                "general_threshold": ("FLOAT", {"default": 0.35, **thr}),
                "character_threshold": ("FLOAT", {"default": 0.75, **thr}),
                "batch_size": ("INT", {"default": 0, "min": 0, "max": 1024, "tooltip": "0 = 16 on CPU, 64 on CUDA"}),
                "device": (list(names.DEVICES), {"default": "auto"}),
            },
            "optional": {
                "backend": (list(names.BACKENDS), {"default": "auto"}),
                "replace_underscores": ("BOOLEAN", {"default": True}),
                "escape_parentheses": ("BOOLEAN", {"default": True}),
                "exclude_tags": ("STRING", {"default": ""}),
                "include_tags": ("STRING", {"default": "", "tooltip": "always written first, e.g. a trigger word"}),
                "text": (["tags", "caption"], {"default": "tags", "tooltip": "what a .txt holds"}),
            },
        }

    RETURN_TYPES = ("STRING", "INT", "INT", "INT")
    RETURN_NAMES = ("summary", "done", "skipped", "failed")
    FUNCTION = "caption"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    DESCRIPTION = "Captions every image of a folder (batched, resumable); failed images are listed in the summary."

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # the folder's contents change outside the graph: always run

    def caption(self, folder, model, format="txt", overwrite=False, recursive=False, general_threshold=0.35,
                character_threshold=0.75, batch_size=0, device="auto", backend="auto", replace_underscores=True,
                escape_parentheses=True, exclude_tags="", include_tags="", text="tags"):
        from tagloom.caption import CaptionJob, ModelChoice, run_caption
        from tagloom.caption.folders import resolve_allowed_folder

        path = resolve_allowed_folder(folder)
        device = _comfy.follow_device(device)  # --cpu must be respected
        # On a ComfyUI GPU 'auto' stays 'auto', not 'cuda': the job then still runs an ONNX-only
        # model (JoyTag, or no torch weights) on the CPU when onnxruntime has no working CUDA,
        # where an explicit 'cuda' is (rightly) an error.
        if device.startswith("cuda") or device == "auto":
            # room for the tagger and a batch (EVA-02 Large bf16 ~1 GB + activations); a no-op on the CPU
            _comfy.make_room(4 * 1024**3)
        job = CaptionJob(
            folder=path, recursive=recursive, fmt=format, overwrite=overwrite, batch_size=batch_size,
            device=device, text_field=text,
            model=ModelChoice(
                model=model, backend=backend,
                thresholds={"general": general_threshold, "character": character_threshold},
                format={"replace_underscores": replace_underscores, "escape_parentheses": escape_parentheses,
                        "exclude": exclude_tags or None, "include": include_tags or None},
            ),
        )
        summary = run_caption(job, _comfy.ComfyProgress())
        return {"ui": {"text": [summary.text()]},
                "result": (summary.text(), summary.done, summary.skipped, len(summary.failed))}


NODE_CLASS_MAPPINGS = {"TagLoomCaptionFolder": TagLoomCaptionFolder}
NODE_DISPLAY_NAME_MAPPINGS = {"TagLoomCaptionFolder": "TagLoom Caption Folder"}
