"""The prompt optimization loop (tagloom/llm/optimize.py).

`generate` and `interrogate` are stand-ins here (a drawing function and a colour reader): the loop
takes them as callables, and the real ones (the graph's diffusion model, our EVA-02 tagger) are too
large to run in this test. The CLIP similarity is a real transformers CLIPModel, built tiny from a
config (no download)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tagloom.llm.optimize import ClipSimilarity, category_order, default_prompt, optimize, tag_f1

COLOURS = {"red_background": (0, 0.9), "blue_hair": (2, 0.8), "green_eyes": (1, 0.6)}


def generate(prompt: str, seed: int) -> np.ndarray:
    img = np.zeros((32, 32, 3), np.float32)
    for tag, (ch, _) in COLOURS.items():
        if tag.replace("_", " ") in prompt:
            img[..., ch] = 1.0
    return img


def interrogate(image) -> list[tuple[str, float]]:
    img = np.asarray(image, np.float32)
    return [(tag, conf if img[..., ch].mean() > 0.5 else 0.05) for tag, (ch, conf) in COLOURS.items()]


def tiny_clip():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 64},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )
    proc = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return ClipSimilarity(transformers.CLIPModel(cfg), proc)


def test_tag_f1():
    assert tag_f1({"a", "b"}, {"a", "b"}) == 1.0
    assert tag_f1({"a", "b"}, {"a"}) == pytest.approx(2 / 3)
    assert tag_f1({"a"}, set()) == 0.0


def test_loop_finds_the_prompt_that_reproduces_the_reference():
    reference = generate("red background, blue hair, green eyes", 0)
    clip = tiny_clip()
    assert clip(reference, reference) == pytest.approx(1.0, abs=1e-5)
    res = optimize(reference, interrogate, generate, rounds=2, threshold=0.35, clip=clip)
    # high_confidence (>= 0.7) misses green_eyes; threshold gets all three and wins
    by = {c.strategy: c for c in res.candidates}
    assert by["high_confidence"].tags == ["red_background", "blue_hair"] and by["high_confidence"].f1 < 1
    assert res.best.f1 == 1.0 and set(res.best.tags) == set(COLOURS)
    assert res.best.clip == pytest.approx(1.0, abs=1e-5)
    assert len(res.images) == len(res.candidates)
    data = json.loads(res.to_json())
    assert data["best"]["prompt"] == res.best.prompt and len(data["candidates"]) == len(res.candidates)
    # round 1 mutated the best candidates (e.g. dropped their weakest tag)
    assert any(c.round == 1 for c in res.candidates)


def test_prompt_keeps_kaomoji_and_escapes_parentheses():
    # Found in the real ComfyUI run: the tagger saw `^_^` and the prompt said "^ ^"; a character tag
    # such as ganyu_(genshin_impact) would have become a weight group for CLIPTextEncode.
    assert default_prompt(["^_^", "ganyu_(genshin_impact)", "school_uniform"]) == \
        "^_^, ganyu \\(genshin impact\\), school uniform"
    seen = []

    def gen(prompt, seed):
        seen.append(prompt)
        return generate(prompt, seed)

    def tags(image):
        return [("^_^", 0.9), ("ganyu_(genshin_impact)", 0.8)]

    res = optimize(np.zeros((8, 8, 3), np.float32), tags, gen, strategies=["threshold"], rounds=1)
    assert seen == ["^_^, ganyu \\(genshin impact\\)"] and res.best.prompt == seen[0]


def test_category_ordered_uses_the_tag_database(tmp_path):
    # Found in the real ComfyUI run: the node passed no `order`, so category_ordered repeated threshold.
    from tagloom.tags.db import TagDB

    with TagDB(tmp_path / "t.sqlite") as db:
        db.upsert_tags([{"name": "hakurei_reimu", "category": 4}, {"name": "school_uniform", "category": 0}])
        order = category_order(db)
        assert order(["school_uniform", "hakurei_reimu", "1girl", "not_in_db"]) == \
            ["1girl", "hakurei_reimu", "school_uniform", "not_in_db"]


def test_unknown_strategy_is_an_error():
    from tagloom.errors import TagLoomError

    with pytest.raises(TagLoomError, match="unknown strategies"):
        optimize(np.zeros((8, 8, 3)), interrogate, generate, strategies=["magic"])


def test_optimize_node_wiring(comfy_pack, monkeypatch):
    """The node with stand-ins for ComfyUI's nodes module (CLIPTextEncode, EmptyLatentImage,
    common_ksampler, VAEDecode: no diffusion model can run here) and for the tagger handle."""
    import sys
    import types

    torch = pytest.importorskip("torch")
    fake = types.ModuleType("nodes")
    fake.CLIPTextEncode = type("E", (), {"encode": lambda self, clip, text: (text,)})
    fake.EmptyLatentImage = type("L", (), {"generate": lambda self, w, h, b: ({"w": w},)})
    fake.common_ksampler = lambda model, seed, steps, cfg, s, sch, pos, neg, latent, **kw: (pos,)
    fake.VAEDecode = type("D", (), {"decode": lambda self, vae, prompt: (torch.from_numpy(generate(prompt, 0))[None],)})
    monkeypatch.setitem(sys.modules, "nodes", fake)

    class Tagger:
        def tag_images(self, images):
            img = np.asarray(images[0], np.float32) / 255
            return [types.SimpleNamespace(general=dict(interrogate(img)), character={})]

    ref = torch.from_numpy(generate("red background, blue hair, green eyes", 0))[None]
    node = comfy_pack.NODE_CLASS_MAPPINGS["TagLoomPromptOptimize"]()
    best, cands, images = node.run(ref, Tagger(), None, None, None, "", 4, 5.0, "euler", "normal", 1,
                                   "high_confidence,threshold", 2, 0.35)
    assert set(best.split(", ")) == {"red background", "blue hair", "green eyes"}
    assert images.shape[0] == len(json.loads(cands)["candidates"]) and images.shape[1:] == (32, 32, 3)
    import comfy_stub

    assert comfy_stub.STATE.progress and comfy_stub.STATE.progress[-1][1] == 4  # 2 strategies x 2 rounds
    # category_ordered opens the user's tag database (the stubbed ComfyUI user folder's, empty here)
    best, cands, _ = node.run(ref, Tagger(), None, None, None, "", 4, 5.0, "euler", "normal", 1,
                              "category_ordered", 1, 0.35)
    assert json.loads(cands)["candidates"][0]["strategy"] == "category_ordered"
