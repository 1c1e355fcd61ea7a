"""Training nodes, loaded the way ComfyUI loads the pack (tests/comfy_stub.py stands in for
ComfyUI's modules). The trainers really run, as child processes."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
torch = pytest.importorskip("torch", reason="needs torch (the dev venv has it; the multi-Python check runs without)")

from train_data import make_dataset



@pytest.fixture(autouse=True)
def datasets_allowed(tmp_path, monkeypatch):
    """These tests keep their datasets in tmp_path, which the user allows here explicitly (the
    workflow_roots setting); test_dataset_outside_the_allowed_folders_is_refused checks the default."""
    monkeypatch.setenv("TAGLOOM_WORKFLOW_ROOTS", str(tmp_path))

def _train_node(pack):
    return pack.NODE_CLASS_MAPPINGS["TagLoomTrain"]()


def _call(node, **kw):
    args = dict(mode="tagger", dataset="", output_name="mine", base_model="", epochs=1, steps=0, batch_size=4,
                learning_rate=1e-3, resolution=28, rank=2, tagger_model_name="eva02_tiny_patch14_224", resume=False,
                extra_args="--workers 0 --val-fraction 0.25", gpus=1)
    args.update(kw)
    return node.train(**args)


def test_node_ids_and_inputs(comfy_pack):
    m = comfy_pack.NODE_CLASS_MAPPINGS
    for node in ("TagLoomTrain", "TagLoomTrainedTaggerLoader", "TagLoomTrainedLoraLoader"):
        assert node in m and node in comfy_pack.NODE_DISPLAY_NAME_MAPPINGS
    train = m["TagLoomTrain"].INPUT_TYPES()
    assert list(train["required"]) == ["mode", "dataset", "output_name", "base_model", "epochs", "steps", "batch_size",
                                       "learning_rate", "resolution", "rank", "tagger_model_name", "resume"]
    assert list(train["optional"]) == ["extra_args", "gpus"]
    assert list(m["TagLoomTrainedLoraLoader"].INPUT_TYPES()["required"])[:3] == ["model", "clip", "lora_name"]


def test_train_tagger_node_then_load_it_into_interrogate(comfy_pack, comfy, tmp_path):
    import comfy_stub

    ds = tmp_path / "ds"
    make_dataset(ds, 8)
    sent = []
    comfy["server"].PromptServer.instance = types.SimpleNamespace(send_sync=lambda event, data: sent.append((event, data)))
    result = _call(_train_node(comfy_pack), dataset=str(ds))
    assert sent and all(e == "tagloom.train" for e, _ in sent)  # step/loss events reach the browser
    assert all("loss" in d and "step" in d and "total" in d for _, d in sent)
    out = result["result"][0]
    from tagloom import config

    assert out == str(config.models_dir() / "mine")  # ComfyUI/models/tagloom/mine
    assert comfy_stub.STATE.unloaded >= 1  # ComfyUI's models were freed before the child started
    assert comfy_stub.STATE.progress and comfy_stub.STATE.progress[-1][0] == comfy_stub.STATE.progress[-1][1]
    loader = comfy_pack.NODE_CLASS_MAPPINGS["TagLoomTrainedTaggerLoader"]
    assert "mine" in loader.INPUT_TYPES()["required"]["model"][0]
    handle, metrics = loader().load("mine", "onnx", "cpu")
    assert "macro_f1" in metrics
    image = torch.from_numpy(np.random.default_rng(0).random((2, 30, 40, 3), dtype=np.float32))
    caption, tags, scores, rating = comfy_pack.NODE_CLASS_MAPPINGS["TagLoomInterrogate"]().interrogate(handle, image)
    assert len(caption) == 2 and rating[0] in {"general", "sensitive", "questionable", "explicit"}
    with pytest.raises(Exception, match="outside models/tagloom"):
        loader().load("mine", "onnx", "cpu", path=str(tmp_path))
    from tagloom.tagger import cache

    cache.free_all()


def test_failed_child_is_a_node_error(comfy_pack, comfy, tmp_path):
    from tagloom.errors import InputFileError, TagLoomError

    (tmp_path / "empty").mkdir()
    with pytest.raises(TagLoomError, match="no images found"):
        _call(_train_node(comfy_pack), dataset=str(tmp_path / "empty"))
    with pytest.raises(InputFileError, match="dataset folder not found"):
        _call(_train_node(comfy_pack), dataset=str(tmp_path / "missing"))
    with pytest.raises(TagLoomError, match="one GPU"):
        _call(_train_node(comfy_pack), mode="lora", dataset=str(tmp_path / "empty"), gpus=2)
    with pytest.raises(TagLoomError, match="plain name"):
        _call(_train_node(comfy_pack), dataset=str(tmp_path / "empty"), output_name="../evil")


def test_cancel_stops_the_child_and_lora_state_is_kept(comfy_pack, comfy, tmp_path):
    """Cancel (ComfyUI's interrupt) during a LoRA run: the child gets SIGTERM, saves its state and ends."""
    import comfy_stub
    from tiny_sd import make_tiny_sd

    ds = tmp_path / "ds"
    make_dataset(ds, 2, size=(32, 32))
    base = make_tiny_sd(tmp_path / "sd")
    steps_seen = []
    original = comfy_stub.STATE

    class Watch(list):
        def append(self, item):
            super().append(item)
            steps_seen.append(item)
            if item[0] >= 1:
                original.interrupt = True  # the user presses Cancel once training is under way

    comfy_stub.STATE.progress = Watch()
    with pytest.raises(comfy_stub.InterruptProcessingException):
        _call(_train_node(comfy_pack), mode="lora", dataset=str(ds), base_model=str(base), steps=10000,
              resolution=32, extra_args="--bucket-step 8 --save-every 100000")
    loras = comfy["folder_paths"].get_folder_paths("loras")[0]
    import pathlib

    state = pathlib.Path(loras) / ".mine.tagloom-state" / "state.tagloom"
    assert state.is_file()  # saved on SIGTERM: a --resume run continues from here
    assert steps_seen and steps_seen[-1][0] < 10000


def test_trained_lora_loader_applies_the_file(comfy_pack, comfy, tmp_path, monkeypatch):
    """comfy.sd is ComfyUI's own LoRA patcher, which cannot run without ComfyUI: a recording stand-in
    (a fake, on purpose) checks that our node hands it the file's kohya tensors."""
    from safetensors.torch import save_file

    loras = comfy["folder_paths"].get_folder_paths("loras")[0]
    save_file({"lora_unet_x.alpha": torch.tensor(1.0)}, f"{loras}/style.safetensors")
    calls = []
    sd = types.ModuleType("comfy.sd")
    sd.load_lora_for_models = lambda model, clip, lora, sm, sc: (calls.append((lora, sm, sc)) or ("M", "C"))
    comfy["comfy.utils"].load_torch_file = lambda path, safe_load=False: __import__("safetensors.torch").torch.load_file(path)
    monkeypatch.setitem(sys.modules, "comfy.sd", sd)
    monkeypatch.setattr(comfy["comfy"], "sd", sd, raising=False)
    node = comfy_pack.NODE_CLASS_MAPPINGS["TagLoomTrainedLoraLoader"]
    assert "style.safetensors" in node.INPUT_TYPES()["required"]["lora_name"][0]
    assert node().load("m", "c", "style.safetensors", 0.8, 0.5) == ("M", "C", "style.safetensors")
    assert set(calls[0][0]) == {"lora_unet_x.alpha"} and calls[0][1:] == (0.8, 0.5)
    assert node().load("m", "c", "", 1.0, 1.0, path=f"{loras}/style.safetensors")[2] == "style.safetensors"
    with pytest.raises(Exception, match="outside models/loras"):
        node().load("m", "c", "", 1.0, 1.0, path=str(tmp_path / "x.safetensors"))


def test_training_example_workflows_match_the_nodes(comfy_pack):
    import json

    from tests_paths import REPO

    m = comfy_pack.NODE_CLASS_MAPPINGS
    for name in ("train_tagger_api.json", "train_lora_api.json"):
        api = json.loads((REPO / "example_workflows" / name).read_text())
        assert any(n["class_type"] == "TagLoomTrain" for n in api.values())
        for node in api.values():
            if node["class_type"] in m:
                spec = m[node["class_type"]].INPUT_TYPES()
                known = set(spec["required"]) | set(spec.get("optional", {}))
                assert set(node["inputs"]) <= known and set(spec["required"]) <= set(node["inputs"]), (name, node)
        # The trained-model loaders link `path` from TagLoomTrain: their combo must hold a value
        # ComfyUI accepts on an install that has trained nothing yet (it validates combo values).
        for node in api.values():
            if node["class_type"] in ("TagLoomTrainedTaggerLoader", "TagLoomTrainedLoraLoader"):
                spec = m[node["class_type"]].INPUT_TYPES()["required"]
                combo = "model" if "model" in spec and isinstance(spec["model"][0], list) else "lora_name"
                assert node["inputs"]["path"] == ["1", 0] and node["inputs"][combo] == ""
                assert spec[combo][0][0] == ""


def test_trained_loaders_without_a_choice_or_a_path_say_so(comfy_pack):
    from tagloom.errors import InputFileError

    m = comfy_pack.NODE_CLASS_MAPPINGS
    with pytest.raises(InputFileError, match="choose a trained tagger, or link a path"):
        m["TagLoomTrainedTaggerLoader"]().load("", "auto", "cpu")
    with pytest.raises(InputFileError, match="choose a LoRA, or link a path"):
        m["TagLoomTrainedLoraLoader"]().load(None, None, "")


def test_dataset_outside_the_allowed_folders_is_refused(comfy_pack, comfy, tmp_path, monkeypatch):
    """A shared workflow cannot train on (read) an arbitrary folder: only input/, output/ and the
    workflow_roots setting (tagloom/workflow_paths.py); a relative name is inside input/."""
    from tagloom.errors import TagLoomError

    monkeypatch.delenv("TAGLOOM_WORKFLOW_ROOTS")
    outside = tmp_path / "elsewhere"
    make_dataset(outside, 2)
    for name in (str(outside), "../../elsewhere"):
        with pytest.raises(TagLoomError, match="not allowed"):
            _call(_train_node(comfy_pack), dataset=name)
    inside = tmp_path / "comfyui" / "input" / "my_ds"
    inside.mkdir(parents=True)
    with pytest.raises(TagLoomError, match="no images found"):  # accepted: the trainer itself looked
        _call(_train_node(comfy_pack), dataset="my_ds")
