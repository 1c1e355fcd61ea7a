"""LLM nodes: categorize / describe the tag database, and idea -> tags.

No node has an API-key input: keys come from the environment or the user config file
(tagloom.config.secret), so they never end up in workflow JSON or PNG metadata. Errors fail the
node (TagLoomError) instead of coming back as text. The ``seed`` input of the idea node is the
explicit "regenerate" control: ComfyUI caches a node's output by its inputs.
"""

from __future__ import annotations

import json

from tagloom.llm.registry import NAMES as PROVIDERS  # declared once (tagloom/llm/registry.py)

from . import _comfy

DEFAULT_URL = "http://127.0.0.1:11434"
# Appended optional input (workflows store widgets by position: new inputs only go last).
TIMEOUT_INPUT = ("FLOAT", {"default": 120.0, "min": 1.0, "max": 3600.0, "step": 1.0,
                           "tooltip": "seconds one request may take before it is retried"})


def _llm_inputs():
    return {
        "provider": (PROVIDERS, {"default": "ollama"}),
        "base_url": ("STRING", {"default": DEFAULT_URL, "tooltip": "Ollama URL, or an OpenAI-compatible .../v1 URL. API keys come from the environment, never from here."}),
        "model": ("STRING", {"default": "qwen2.5:7b-instruct"}),
    }


class _TagJobNode:
    TASK = "categorize"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("summary",)
    FUNCTION = "run"
    CATEGORY = "TagLoom/LLM"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        req = _llm_inputs()
        req.update({
            "batch_size": ("INT", {"default": 50 if cls.TASK == "categorize" else 25, "min": 1, "max": 500}),
            "concurrency": ("INT", {"default": 1, "min": 1, "max": 64}),
            "limit": ("INT", {"default": 0, "min": 0, "max": 10_000_000, "tooltip": "0 = every pending tag"}),
        })
        opt = {"tiers_file": ("STRING", {"default": "", "tooltip": "optional tiers TOML/JSON (overrides provider/model)"})}
        if cls.TASK == "categorize":
            opt["first_pass"] = ("BOOLEAN", {"default": False, "tooltip": "free first pass from the nearest categorized tags"})
        opt["timeout"] = TIMEOUT_INPUT
        if cls.TASK == "categorize":
            opt["plan"] = (["tiers", "auto"], {"default": "tiers", "tooltip": (
                "auto: the upper tiers ask the popular tags, the nearest labelled tags label what they are sure of, "
                "the last tier asks the rest and re-asks unsure guesses")})
        return {"required": req, "optional": opt}

    def run(self, provider, base_url, model, batch_size, concurrency, limit, tiers_file="", first_pass=False, timeout=120.0,
            plan="tiers"):
        from tagloom.errors import CancelledError
        from tagloom.llm import jobs, pipeline
        from tagloom.llm.tiers import load_tiers
        from tagloom.tags.db import TagDB

        task = jobs.TASKS[self.TASK]
        if tiers_file.strip():
            from tagloom.workflow_paths import settings_file

            # a shared workflow reads a tiers file only from user/tagloom, input/ or workflow_roots
            tiers = load_tiers(settings_file(tiers_file.strip(), "tiers file"))
            for t in tiers:
                t.timeout = float(timeout)
        else:
            tiers = [pipeline.single_tier(provider, model, base_url.strip() or None, batch_size, concurrency, timeout=timeout)]
        bar = _comfy.ComfyProgress()
        progress, should_stop = bar.quiet_callback(), bar.stopped
        with TagDB() as db:
            try:
                if plan == "auto" and self.TASK == "categorize":
                    summary = _run_auto(db, tiers, limit, progress, should_stop)
                else:
                    planned = pipeline.plan(db, task, tiers, limit=limit or None)
                    summary = pipeline.run(db, task, planned, first_pass=first_pass, progress=progress, should_stop=should_stop)
            except CancelledError:
                _comfy.raise_if_interrupted()
                raise
        return (json.dumps(summary, ensure_ascii=False, indent=1),)


def _run_auto(db, tiers, limit, progress, should_stop) -> dict:
    from tagloom.llm import autoplan, coverage
    from tagloom.llm.providers import make_provider

    before = coverage.compute(db)
    plan = autoplan.make_plan(db, tiers, limit=limit or None)
    summary = autoplan.run(
        db, plan,
        lambda t: make_provider(t.provider, t.model, base_url=t.base_url, api_key_env=t.api_key_env,
                                timeout=t.timeout, num_ctx=t.num_ctx),
        progress=progress, should_stop=should_stop,
    )
    after = coverage.compute(db)
    coverage.save_last_run(db, before, after)
    summary["coverage"] = coverage.change_line(before["total"], after["total"])
    return summary


class TagLoomCategorizeTags(_TagJobNode):
    TASK = "categorize"
    DESCRIPTION = "Categorize pending tags of the tag database with an LLM (resumable; never re-asks an answered tag)."


class TagLoomDescribeTags(_TagJobNode):
    TASK = "describe"
    DESCRIPTION = "Write one-line descriptions and Chinese names for tags that lack them (resumable)."


class TagLoomIdeaToTags:
    RETURN_TYPES = ("STRING", "STRING", "STRING")
    RETURN_NAMES = ("prompt", "report", "tags_json")
    FUNCTION = "run"
    CATEGORY = "TagLoom/LLM"
    DESCRIPTION = "Free text in any language -> real Danbooru tags, snapped to the tag database, ordered by category; (tag:1.2) weights kept."

    @classmethod
    def INPUT_TYPES(cls):
        req = {"idea": ("STRING", {"multiline": True, "default": ""})}
        req.update(_llm_inputs())
        req.update({
            "max_tags": ("INT", {"default": 30, "min": 1, "max": 100}),
            "underscores": ("BOOLEAN", {"default": False}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF, "tooltip": "change to ask the model again"}),
        })
        return {"required": req, "optional": {"timeout": TIMEOUT_INPUT}}

    def run(self, idea, provider, base_url, model, max_tags, underscores, seed, timeout=120.0):
        from tagloom.llm.ideas import idea_to_tags
        from tagloom.llm.pipeline import single_tier
        from tagloom.llm.providers import make_provider
        from tagloom.tags.db import TagDB

        tier = single_tier(provider, model, base_url.strip() or None, timeout=timeout)
        prov = make_provider(tier.provider, tier.model, base_url=tier.base_url, api_key_env=tier.api_key_env,
                             timeout=tier.timeout)
        with TagDB() as db:
            res = idea_to_tags(idea, prov, db, max_tags=max_tags, underscores=underscores)
        data = {"tags": res.tags, "dropped": res.dropped, "replaced": res.replaced, "usage": res.usage}
        return (res.prompt, res.report(), json.dumps(data, ensure_ascii=False))


NODE_CLASS_MAPPINGS = {
    "TagLoomCategorizeTags": TagLoomCategorizeTags,
    "TagLoomDescribeTags": TagLoomDescribeTags,
    "TagLoomIdeaToTags": TagLoomIdeaToTags,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TagLoomCategorizeTags": "TagLoom Categorize Tags (LLM)",
    "TagLoomDescribeTags": "TagLoom Describe Tags (LLM)",
    "TagLoomIdeaToTags": "TagLoom Idea to Tags (LLM)",
}
