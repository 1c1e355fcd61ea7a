"""Prompt optimization node: reference image -> best prompt for the graph's model.

A thin wrapper over tagloom.llm.optimize: it builds ``generate`` from the graph's MODEL/CLIP/VAE
with ComfyUI's own CLIPTextEncode / EmptyLatentImage / common_ksampler / VAEDecode (imported lazily,
so the pack loads without them) and ``interrogate`` from a TAGLOOM_TAGGER handle.
"""

from __future__ import annotations

from . import _comfy


class TagLoomPromptOptimize:
    RETURN_TYPES = ("STRING", "STRING", "IMAGE")
    RETURN_NAMES = ("best_prompt", "candidates_json", "images")
    FUNCTION = "run"
    CATEGORY = "TagLoom/LLM"
    DESCRIPTION = ("Interrogate a reference image, build candidate prompts by named strategies, generate each at low "
                   "steps, score by tag-set F1 (and CLIP image similarity), iterate; outputs the best prompt.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "reference": ("IMAGE",),
                "tagger": ("TAGLOOM_TAGGER",),
                "model": ("MODEL",),
                "clip": ("CLIP",),
                "vae": ("VAE",),
                "negative": ("STRING", {"multiline": True, "default": "lowres, bad anatomy"}),
                "steps": ("INT", {"default": 8, "min": 1, "max": 100}),
                "cfg": ("FLOAT", {"default": 6.0, "min": 0.0, "max": 30.0, "step": 0.5}),
                "sampler_name": ("STRING", {"default": "euler"}),
                "scheduler": ("STRING", {"default": "normal"}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
                "strategies": ("STRING", {"default": "high_confidence,threshold,category_ordered"}),
                "rounds": ("INT", {"default": 2, "min": 1, "max": 10}),
                "threshold": ("FLOAT", {"default": 0.35, "min": 0.0, "max": 1.0, "step": 0.01}),
            },
            "optional": {
                "clip_model": ("STRING", {"default": "", "tooltip": "a CLIP model (hub id or folder) for image similarity, e.g. patrickjohncyh/fashion-clip; empty = tag F1 only"}),
                "width": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8}),
                "height": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8}),
            },
        }

    def run(self, reference, tagger, model, clip, vae, negative, steps, cfg, sampler_name, scheduler, seed,
            strategies, rounds, threshold, clip_model="", width=512, height=512):
        import nodes as comfy_nodes  # ComfyUI's own nodes module
        import torch

        from tagloom.llm.optimize import ClipSimilarity, _to_pil, category_order, optimize
        from tagloom.tags.db import TagDB

        tag_model = tagger.get() if hasattr(tagger, "get") else tagger

        def interrogate(image):
            res = tag_model.tag_images([_to_pil(image)])[0]
            return list(res.general.items()) + list(res.character.items())

        neg = comfy_nodes.CLIPTextEncode().encode(clip, negative)[0]
        names = [s.strip() for s in strategies.split(",") if s.strip()]
        # At most one generation per strategy and round (identical candidates are generated once).
        total = max(1, len(names) * rounds)
        progress = _comfy.ComfyProgress()
        progress.start(total)

        def generate(prompt: str, s: int):
            progress.update(min(progress.done + 1, total))  # checks for Cancel first
            pos = comfy_nodes.CLIPTextEncode().encode(clip, prompt)[0]
            latent = comfy_nodes.EmptyLatentImage().generate(width, height, 1)[0]
            out = comfy_nodes.common_ksampler(model, s, steps, cfg, sampler_name, scheduler, pos, neg, latent)[0]
            return comfy_nodes.VAEDecode().decode(vae, out)[0]  # B,H,W,C float 0..1

        sim = ClipSimilarity.from_pretrained(clip_model.strip()) if clip_model.strip() else None
        # category_ordered needs the tag database's categories (without it, it would repeat `threshold`).
        db = TagDB() if "category_ordered" in names else None
        try:
            res = optimize(reference[0:1], interrogate, generate, strategies=names, rounds=rounds, threshold=threshold,
                           clip=sim, seed=seed, order=category_order(db) if db else None,
                           should_stop=progress.stopped)
        finally:
            if db:
                db.close()
        images = torch.cat([img if img.ndim == 4 else img[None] for img in res.images], dim=0)
        return (res.best.prompt, res.to_json(), images)


NODE_CLASS_MAPPINGS = {"TagLoomPromptOptimize": TagLoomPromptOptimize}
NODE_DISPLAY_NAME_MAPPINGS = {"TagLoomPromptOptimize": "TagLoom Prompt Optimize (reference image)"}
