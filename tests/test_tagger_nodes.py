"""The tagger nodes loaded the way ComfyUI loads the pack (tests/comfy_stub.py stands in for ComfyUI's
modules; the real server run is in docs/development.md)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
torch = pytest.importorskip("torch", reason="needs torch (the dev venv has it; the multi-Python check runs without)")

from tagger_helpers import tiny_model


@pytest.fixture
def pack_with_model(comfy_pack, comfy):
    import comfy_stub
    from tagloom import config

    target = config.models_dir() / "tiny-eva02"  # ComfyUI/models/tagloom/tiny-eva02
    shutil.copytree(tiny_model(), target)
    yield comfy_pack, comfy_stub
    from tagloom.tagger import cache

    cache.free_all()


def _image_batch(n=3):
    rng = np.random.default_rng(5)
    return torch.from_numpy(rng.integers(0, 256, (n, 40, 52, 3)).astype(np.float32) / 255.0)


def test_node_ids_and_inputs(comfy_pack):
    m = comfy_pack.NODE_CLASS_MAPPINGS
    for node in ("TagLoomTaggerLoader", "TagLoomInterrogate", "TagLoomTagFilter"):
        assert node in m and node in comfy_pack.NODE_DISPLAY_NAME_MAPPINGS
    loader = m["TagLoomTaggerLoader"].INPUT_TYPES()["required"]
    assert list(loader) == ["model", "backend", "device"]
    assert loader["model"][0][0] == "SmilingWolf/wd-eva02-large-tagger-v3"
    inter = m["TagLoomInterrogate"].INPUT_TYPES()
    assert list(inter["required"])[:5] == ["tagger", "image", "general_threshold", "character_threshold", "artist_threshold"]
    assert "threshold_file" in inter["optional"]


def test_loader_interrogate_batch_progress_and_unload(pack_with_model, tmp_path):
    pack, stub = pack_with_model
    m = pack.NODE_CLASS_MAPPINGS
    assert "tiny-eva02" in m["TagLoomTaggerLoader"].INPUT_TYPES()["required"]["model"][0]
    (handle,) = m["TagLoomTaggerLoader"]().load("tiny-eva02", "auto", "cpu")
    node = m["TagLoomInterrogate"]()
    assert node.OUTPUT_IS_LIST == (True, True, True, True)
    captions, tags, scores, ratings = node.interrogate(handle, _image_batch(3), general_threshold=0.3, max_tags=4)
    assert len(captions) == len(tags) == len(scores) == len(ratings) == 3
    assert all(len([t for t in c.split(", ") if t]) <= 4 for c in captions)
    d = json.loads(scores[0])
    assert set(d) == {"ratings", "general", "character", "artist", "caption", "tags"}
    assert all(v >= 0.3 for v in d["general"].values())
    assert stub.STATE.progress[-1] == (3, 3)
    # ComfyUI's "Unload models" (POST /free -> model_management.unload_all_models) frees our cache.
    assert handle.is_loaded()
    import comfy.model_management as mm

    mm.unload_all_models()
    assert not handle.is_loaded() and stub.STATE.unloaded == 1
    # ...and the next run loads again transparently.
    captions2, *_ = node.interrogate(handle, _image_batch(3), general_threshold=0.3, max_tags=4)
    assert captions2 == captions


def test_threshold_file_input(pack_with_model):
    pack, _ = pack_with_model
    from tagloom import config

    (config.models_dir() / "tiny-eva02" / "strict.json").write_text(json.dumps({"general": 1.0, "character": 1.0}))
    (handle,) = pack.NODE_CLASS_MAPPINGS["TagLoomTaggerLoader"]().load("tiny-eva02", "onnx", "cpu")
    _, tags, scores, _ = pack.NODE_CLASS_MAPPINGS["TagLoomInterrogate"]().interrogate(
        handle, _image_batch(1), general_threshold=0.0, threshold_file="strict.json")
    assert json.loads(scores[0])["general"] == {} and tags == [""]
    from tagloom.errors import TagLoomError

    with pytest.raises(TagLoomError, match="outside"):
        pack.NODE_CLASS_MAPPINGS["TagLoomInterrogate"]().interrogate(handle, _image_batch(1), threshold_file="/etc/passwd")


def test_loader_precision_int8_tags_like_fp32(pack_with_model):
    """The loader's optional precision input (appended: older workflows load unchanged)."""
    pytest.importorskip("onnx")
    pack, _ = pack_with_model
    loader = pack.NODE_CLASS_MAPPINGS["TagLoomTaggerLoader"]
    assert loader.INPUT_TYPES()["optional"]["precision"][1]["default"] == "fp32"
    (fp32,) = loader().load("tiny-eva02", "onnx", "cpu")
    (int8,) = loader().load("tiny-eva02", "onnx", "cpu", "int8")
    assert int8.get().runner.precision == "int8" and int8.get() is not fp32.get()
    node = pack.NODE_CLASS_MAPPINGS["TagLoomInterrogate"]()
    a = json.loads(node.interrogate(fp32, _image_batch(1), general_threshold=0.0)[2][0])
    b = json.loads(node.interrogate(int8, _image_batch(1), general_threshold=0.0)[2][0])
    assert a["general"].keys() == b["general"].keys()
    assert max(abs(a["general"][t] - b["general"][t]) for t in a["general"]) < 0.05


def test_cancel_stops_the_batch(pack_with_model):
    pack, stub = pack_with_model
    (handle,) = pack.NODE_CLASS_MAPPINGS["TagLoomTaggerLoader"]().load("tiny-eva02", "onnx", "cpu")
    stub.STATE.interrupt = True
    with pytest.raises(stub.InterruptProcessingException):
        pack.NODE_CLASS_MAPPINGS["TagLoomInterrogate"]().interrogate(handle, _image_batch(2))


def test_missing_model_fails_the_loader_with_a_clear_message(comfy_pack, monkeypatch):
    from tagloom.errors import TagLoomError

    monkeypatch.setenv("TAGLOOM_HF_OFFLINE", "1")
    with pytest.raises(TagLoomError, match="offline"):
        comfy_pack.NODE_CLASS_MAPPINGS["TagLoomTaggerLoader"]().load("SmilingWolf/wd-eva02-large-tagger-v3", "auto", "cpu")


def test_tag_filter_node(comfy_pack):
    f = comfy_pack.NODE_CLASS_MAPPINGS["TagLoomTagFilter"]()
    (out,) = f.filter("1girl, long hair, ask \\(askzy\\), ^_^, solo", exclude_tags="solo", include_tags="masterpiece",
                      replace="long_hair=very_long_hair", sort="alpha", max_tags=4, trailing_comma=True)
    assert out == "masterpiece, 1girl, ^_^, ask \\(askzy\\),"


def _widget_inputs(spec: dict) -> list[str]:
    """Inputs that are widgets (stored by position in UI workflows): everything but node links."""
    names = []
    for group in ("required", "optional"):
        for name, (typ, *rest) in spec.get(group, {}).items():
            opts = rest[0] if rest else {}
            if isinstance(typ, list) or typ in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                if not opts.get("forceInput"):
                    names.append(name)
    return names


# (UI-format file, its API-format variant, the TagLoom node whose first output feeds CLIPTextEncode's
# text, whether the API variant has that link too: tag_image_api.json only previews the text)
EXAMPLE_WORKFLOWS = [
    ("tag_image_to_prompt.json", "tag_image_api.json", "TagLoomInterrogate", False),
    ("tag_search_to_prompt.json", "tag_search_api.json", "TagLoomTagSearch", True),
]


@pytest.mark.parametrize("ui_name, api_name, source, api_encodes", EXAMPLE_WORKFLOWS)
def test_example_workflows_match_the_nodes(comfy_pack, ui_name, api_name, source, api_encodes):
    from tests_paths import REPO

    m = comfy_pack.NODE_CLASS_MAPPINGS
    ui = json.loads((REPO / "example_workflows" / ui_name).read_text(encoding="utf-8"))
    types = {n["type"] for n in ui["nodes"]}
    assert {source, "CLIPTextEncode"} <= types
    ui_widgets = {}
    for node in ui["nodes"]:
        if node["type"] in m:
            names = _widget_inputs(m[node["type"]].INPUT_TYPES())
            assert len(node["widgets_values"]) == len(names), node["type"]
            ui_widgets[node["type"]] = dict(zip(names, node["widgets_values"]))
    # every link is recorded at both ends
    nodes = {n["id"]: n for n in ui["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, _typ in ui["links"]:
        assert link_id in (nodes[src]["outputs"][src_slot]["links"] or [])
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
    # the TagLoom node's text feeds a CLIPTextEncode's text
    enc = {n["id"] for n in ui["nodes"] if n["type"] == "CLIPTextEncode"}
    src_id = next(n["id"] for n in ui["nodes"] if n["type"] == source)
    assert any(link[1] == src_id and link[2] == 0 and link[3] in enc and nodes[link[3]]["inputs"][link[4]]["name"] == "text"
               for link in ui["links"])

    api = json.loads((REPO / "example_workflows" / api_name).read_text(encoding="utf-8"))
    for node in api.values():
        for value in node["inputs"].values():
            if isinstance(value, list):
                assert value[0] in api  # links point at nodes of the prompt
        if node["class_type"] in m:
            spec = m[node["class_type"]].INPUT_TYPES()
            known = set(spec["required"]) | set(spec.get("optional", {}))
            assert set(node["inputs"]) <= known and set(spec["required"]) <= set(node["inputs"])
            # the API variant holds the same widget values as the UI file
            for name, value in ui_widgets.get(node["class_type"], {}).items():
                if name in node["inputs"]:
                    assert node["inputs"][name] == value, (api_name, node["class_type"], name)
    src_key = next(k for k, n in api.items() if n["class_type"] == source)
    encodes = any(n["class_type"] == "CLIPTextEncode" and n["inputs"]["text"] == [src_key, 0] for n in api.values())
    assert encodes == api_encodes
