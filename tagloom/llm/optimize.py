"""Prompt optimization against a reference image: interrogate, build candidate prompts with named
strategies, generate each, score against the reference, iterate, keep the best.

Everything the loop needs from outside is a callable, so it runs the same in ComfyUI (a node passes
closures over the graph's model and sampler and our tagger), in the CLI, and in tests (tiny models):

- ``interrogate(image) -> [(tag, confidence), ...]`` — our tagger;
- ``generate(prompt, seed) -> image`` — the graph's model at low steps;
- ``clip`` (optional) — :class:`ClipSimilarity`, image-image cosine with any CLIP model loaded
  through transformers (e.g. ``patrickjohncyh/fashion-clip``, ``openai/clip-vit-base-patch32``).

Score of a candidate = mean of tag-set F1 (tags of the generated image vs. tags of the reference,
both above ``threshold``) and, when a CLIP model is given, the CLIP cosine mapped to 0..1.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

Tags = list[tuple[str, float]]


def tag_f1(reference: set[str], generated: set[str]) -> float:
    if not reference and not generated:
        return 1.0
    tp = len(reference & generated)
    if tp == 0:
        return 0.0
    p = tp / len(generated)
    r = tp / len(reference)
    return 2 * p * r / (p + r)


def default_prompt(tags: Sequence[str]) -> str:
    """Tags -> a prompt the graph's text encoder reads as meant: underscores become spaces except in
    kaomoji (``^_^`` stays a face, not ``^ ^``), and parentheses are escaped (``ganyu_(genshin_impact)``
    would otherwise be read by ComfyUI/A1111 as a weight group, not as the tag)."""
    from tagloom.tagger.formatting import FormatOptions, format_tag

    opts = FormatOptions()
    return ", ".join(format_tag(t, opts) for t in tags)


def category_order(db) -> Callable[[list[str]], list[str]]:
    """The ``order`` for ``category_ordered``: the idea node's prompt order (count, character, series,
    artist, then appearance ... quality/meta) from the tag database; the tagger's order within a group.
    Tags the database lacks keep their place among the unknown ones."""
    from tagloom.llm.ideas import _group

    def order(names: list[str]) -> list[str]:
        ranked = sorted(enumerate(names), key=lambda it: (_group(db.get(it[1]), it[1]), it[0]))
        return [t for _, t in ranked]

    return order


def _to_pil(image):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.ndim == 4:  # ComfyUI IMAGE batch: B,H,W,C float 0..1
        arr = arr[0]
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(arr[..., :3])


class ClipSimilarity:
    """Image-image cosine similarity with a CLIP model loaded through transformers."""

    def __init__(self, model, processor, device: str = "cpu"):
        self.model = model.eval().to(device)
        self.processor = processor
        self.device = device
        self._cache: dict[int, Any] = {}

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str = "cpu") -> "ClipSimilarity":
        from transformers import CLIPImageProcessor, CLIPModel

        return cls(CLIPModel.from_pretrained(name_or_path), CLIPImageProcessor.from_pretrained(name_or_path), device)

    def embed(self, image):
        import torch

        inputs = self.processor(images=_to_pil(image), return_tensors="pt").to(self.device)
        with torch.no_grad():
            out = self.model.get_image_features(**inputs)
        feats = out if isinstance(out, torch.Tensor) else getattr(out, "image_embeds", None)
        if feats is None:  # newer transformers return a model output
            feats = out.pooler_output
        return torch.nn.functional.normalize(feats.float(), dim=-1)[0]

    def __call__(self, a, b) -> float:
        return float(self.embed(a) @ self.embed(b))


def _above(tags: Tags, threshold: float) -> list[tuple[str, float]]:
    return sorted([(t, c) for t, c in tags if c >= threshold], key=lambda x: -x[1])


def strategy_high_confidence(tags: Tags, threshold: float, order=None, provider=None) -> list[str]:
    return [t for t, _ in _above(tags, max(0.7, threshold))]


def strategy_threshold(tags: Tags, threshold: float, order=None, provider=None) -> list[str]:
    return [t for t, _ in _above(tags, threshold)]


def strategy_category_ordered(tags: Tags, threshold: float, order=None, provider=None) -> list[str]:
    names = [t for t, _ in _above(tags, threshold)]
    return order(names) if order else names


def strategy_llm_rewrite(tags: Tags, threshold: float, order=None, provider=None) -> list[str]:
    """The LLM prunes and reorders the tags for a text-to-image prompt (output is snapped back to
    the input tags: the LLM may not invent tags the tagger did not see)."""
    names = [t for t, _ in _above(tags, threshold)]
    if provider is None or not names:
        return names
    schema = {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}}},
              "required": ["tags"], "additionalProperties": False}
    res = provider.chat_json(
        "You rewrite Danbooru tag lists into the best prompt for an anime image model: keep the tags "
        "that describe the picture, drop redundant ones, most important first. Use only given tags.",
        "Tags: " + ", ".join(names), schema,
    )
    allowed = set(names)
    out = [t for t in (res.data.get("tags") or []) if isinstance(t, str) and t in allowed]
    return list(dict.fromkeys(out)) or names


STRATEGIES: dict[str, Callable] = {
    "high_confidence": strategy_high_confidence,
    "threshold": strategy_threshold,
    "category_ordered": strategy_category_ordered,
    "llm_rewrite": strategy_llm_rewrite,
}


@dataclass
class Candidate:
    strategy: str
    round: int
    tags: list[str]
    prompt: str
    seed: int
    f1: float = 0.0
    clip: float | None = None
    score: float = 0.0
    generated_tags: list[str] = field(default_factory=list)
    image_index: int = -1


@dataclass
class OptimizeResult:
    best: Candidate
    candidates: list[Candidate]
    images: list[Any]
    reference_tags: list[str]

    def to_json(self) -> str:
        return json.dumps({
            "best": asdict(self.best), "reference_tags": self.reference_tags,
            "candidates": [asdict(c) for c in sorted(self.candidates, key=lambda c: -c.score)],
        }, ensure_ascii=False, indent=1)


def optimize(
    reference,
    interrogate: Callable[[Any], Tags],
    generate: Callable[[str, int], Any],
    strategies: Sequence[str] = ("high_confidence", "threshold", "category_ordered"),
    rounds: int = 2,
    keep: int = 2,
    threshold: float = 0.35,
    clip: ClipSimilarity | None = None,
    seed: int = 0,
    format_prompt: Callable[[list[str]], str] | None = None,
    order: Callable[[list[str]], list[str]] | None = None,
    provider=None,
    should_stop: Callable[[], bool] | None = None,
) -> OptimizeResult:
    """See the module docstring. Round 0 runs each named strategy; each later round mutates the
    ``keep`` best candidates: add the reference tags their image missed, drop prompt tags whose
    image showed tags the reference does not have least confidently."""
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        from tagloom.errors import TagLoomError

        raise TagLoomError(f"unknown strategies {unknown}: use {', '.join(STRATEGIES)}")
    fmt = format_prompt or default_prompt
    ref_tags = interrogate(reference)
    ref_conf = dict(ref_tags)
    ref_set = {t for t, c in ref_tags if c >= threshold}
    candidates: list[Candidate] = []
    images: list[Any] = []
    seen: set[tuple[str, ...]] = set()

    def evaluate(c: Candidate) -> None:
        img = generate(c.prompt, c.seed)
        images.append(img)
        c.image_index = len(images) - 1
        gen = {t for t, conf in interrogate(img) if conf >= threshold}
        c.generated_tags = sorted(gen)
        c.f1 = tag_f1(ref_set, gen)
        if clip is not None:
            c.clip = clip(reference, img)
            c.score = (c.f1 + (c.clip + 1) / 2) / 2
        else:
            c.score = c.f1
        candidates.append(c)

    def add(strategy: str, rnd: int, tags: list[str]) -> None:
        key = tuple(tags)
        if not tags or key in seen or (should_stop and should_stop()):
            return
        seen.add(key)
        evaluate(Candidate(strategy, rnd, list(tags), fmt(tags), seed))

    for name in strategies:
        add(name, 0, STRATEGIES[name](ref_tags, threshold, order=order, provider=provider))
    for rnd in range(1, rounds):
        best = sorted(candidates, key=lambda c: -c.score)[:keep]
        for c in best:
            gen = set(c.generated_tags)
            missed = sorted(ref_set - gen - set(c.tags), key=lambda t: -ref_conf.get(t, 0))
            if missed:
                add(f"{c.strategy}+missed", rnd, c.tags + missed[:3])
            if len(c.tags) > 1:
                weakest = min(c.tags, key=lambda t: ref_conf.get(t, 0))
                add(f"{c.strategy}-weakest", rnd, [t for t in c.tags if t != weakest])
    if not candidates:
        from tagloom.errors import TagLoomError

        raise TagLoomError("no candidate prompt: the reference image gave no tags above the threshold")
    best = max(candidates, key=lambda c: (c.score, -c.round))
    return OptimizeResult(best=best, candidates=candidates, images=images, reference_tags=sorted(ref_set))
