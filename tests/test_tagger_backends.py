"""Both backends on the same tiny EVA-02 weights (real ONNX Runtime, real timm), JoyTag's I/O,
model folders and the registry's download path."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from tagloom.errors import InputFileError, TagLoomError
from tagloom.tagger import load_tagger, resolve_model
from tagloom.tagger import registry
from tagger_helpers import JOYTAG_TAGS, tiny_joytag, tiny_model


def _images(n=3):
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 255, (40 + 9 * i, 60, 3), dtype=np.uint8)) for i in range(n)]


@pytest.fixture(scope="module")
def taggers():
    d = tiny_model()
    return load_tagger(d, backend="onnx", device="cpu"), load_tagger(d, backend="torch", device="cpu")


def test_onnx_and_torch_agree_within_1e4(taggers):
    onnx, torch_ = taggers
    assert onnx.backend == "onnx" and onnx.provider == "CPUExecutionProvider" and onnx.device == "cpu"
    assert torch_.backend == "torch" and torch_.device == "cpu"
    assert onnx.input_size == torch_.input_size == 56
    x = np.stack([onnx.preprocess(i) for i in _images()])
    assert x.shape == (3, 56, 56, 3)
    p1, p2 = onnx.predict(x), torch_.predict(x)
    assert p1.shape == (3, len(onnx.labels)) and p1.dtype == np.float32
    assert float(np.abs(p1 - p2).max()) < 1e-4
    assert p1.std() > 0.05  # scores spread out: a preprocessing slip would show


def test_predict_tensor_and_tag_images(taggers, tmp_path):
    import torch

    onnx, torch_ = taggers
    x = np.stack([torch_.preprocess(i) for i in _images(2)])
    pt = torch_.predict_tensor(torch.from_numpy(x))
    assert isinstance(pt, torch.Tensor)
    assert float((pt - torch.from_numpy(onnx.predict(x))).abs().max()) < 1e-4
    path = tmp_path / "a.png"
    _images(1)[0].save(path)
    res = onnx.tag_images([path, _images(1)[0]], batch_size=1)
    assert res[0].file == str(path) and res[1].file is None
    assert res[0].general == res[1].general  # the file and the same picture in memory agree
    assert res[0].rating in ("general", "sensitive", "questionable", "explicit")


def test_auto_backend_and_weightless_folder(tmp_path):
    assert resolve_model(tiny_model(), "auto").backend == "onnx"
    d = tiny_model(tmp_path / "m")
    (d / "model.onnx").unlink()
    assert resolve_model(d, "auto").backend == "torch"
    (d / "model.safetensors").unlink()
    with pytest.raises(InputFileError, match="no weights"):
        load_tagger(d)
    with pytest.raises(InputFileError, match="model.onnx"):
        load_tagger(d, backend="onnx")


def test_labels_that_do_not_match_the_weights(tmp_path):
    d = tiny_model(tmp_path / "m")
    lines = (d / "selected_tags.csv").read_text().splitlines()
    (d / "selected_tags.csv").write_text("\n".join(lines[:-2]) + "\n")
    with pytest.raises(TagLoomError, match="outputs"):
        load_tagger(d, backend="onnx")


def test_truncated_onnx_names_the_file(tmp_path):
    d = tiny_model(tmp_path / "m")
    (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes()[:1000])
    with pytest.raises(InputFileError, match="model.onnx"):
        load_tagger(d, backend="onnx")


def test_cuda_request_without_gpu_is_an_error_not_a_silent_cpu_run():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine's onnxruntime has CUDA; covered by bench/tagger.py on GPU hosts")
    with pytest.raises(TagLoomError, match="cuda"):
        load_tagger(tiny_model(), backend="onnx", device="cuda")


def test_one_onnx_session_for_tagger_and_caption_engine(tmp_path):
    """tagger.backends.onnx_session serves both: ONNX Runtime's defaults for one interactive image,
    fixed threads without spinning for the caption engine; the same errors for both."""
    import onnxruntime as ort

    from tagloom.caption.engines import OnnxEngine
    from tagloom.tagger.backends import OnnxBackend, onnx_session

    d = tiny_model()
    session, provider, device = onnx_session(d / "model.onnx", "cpu", threads=1, spinning=False)
    opts = session.get_session_options()
    assert (provider, device) == ("CPUExecutionProvider", "cpu")
    assert opts.intra_op_num_threads == 1 and opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    engine = OnnxEngine(d, "wd", "cpu", threads=1)
    assert engine.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert OnnxBackend(d / "model.onnx", "cpu").session.get_session_options().intra_op_num_threads == 0  # ORT's default
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not onnx")
    for make in (lambda: OnnxBackend(bad, "cpu"), lambda: OnnxEngine(tmp_path, "wd", "cpu")):
        with pytest.raises(InputFileError, match="cannot be loaded by ONNX Runtime"):
            make()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        for make in (lambda: OnnxBackend(d / "model.onnx", "cuda"), lambda: OnnxEngine(d, "wd", "cuda")):
            with pytest.raises(TagLoomError, match="no CUDA provider"):
                make()


@pytest.mark.gpu
def test_cuda_backends_agree():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    t = load_tagger(tiny_model(), backend="torch", device="cuda")
    c = load_tagger(tiny_model(), backend="onnx", device="cpu")
    x = np.stack([c.preprocess(i) for i in _images()])
    assert t.device == "cuda"
    assert float(np.abs(t.predict(x) - c.predict(x)).max()) < 1e-3


def test_joytag_folder_io():
    d = tiny_joytag()
    t = load_tagger(d)
    assert t.family == "joytag" and t.layout == "NCHW" and t.backend == "onnx" and t.input_size == 32
    assert t.labels.names == JOYTAG_TAGS and t.labels.rating.size == 0
    res = t.tag_images(_images(2))
    assert res[0].rating is None and res[0].ratings == {}
    # logits were turned into probabilities
    x = np.stack([t.preprocess(i) for i in _images(2)])
    p = t.predict(x)
    assert x.shape == (2, 3, 32, 32) and p.min() >= 0 and p.max() <= 1
    with pytest.raises(TagLoomError, match="ONNX"):
        load_tagger(d, backend="torch")


def test_joytag_hub_snapshot_without_onnx_is_a_clear_error(tmp_path):
    # The hub repo also holds JoyTag's own config.json + model.safetensors (not a timm model).
    d = tiny_joytag(tmp_path / "joytag")
    (d / "model.onnx").unlink()
    (d / "config.json").write_text('{"image_size": 448}')
    (d / "model.safetensors").write_bytes(b"")
    with pytest.raises(InputFileError, match="model.onnx"):
        load_tagger(d)


def test_known_names_resolve():
    assert registry.find_spec("SmilingWolf/wd-eva02-large-tagger-v3").short_name == "wd-eva02-large-tagger-v3"
    assert registry.find_spec("wd-vit-tagger-v3").repo_id == "SmilingWolf/wd-vit-tagger-v3"
    assert registry.find_spec("fpgaminer/joytag").family == "joytag"
    assert registry.DEFAULT_MODEL == "SmilingWolf/wd-eva02-large-tagger-v3"
    with pytest.raises(TagLoomError, match="unknown tagger model"):
        resolve_model("no-such-model")


def test_download_path_first_use_then_offline(tmp_path, monkeypatch, tagloom_home):
    """The hub cannot be reached from tests: only the network call (registry._hub_download) is
    replaced, by a copy from a local folder that plays the hub repo. Everything around it is real."""
    hub = tiny_model(tmp_path / "hub")
    calls = []

    def fake_hub_download(repo_id, filename, local_dir, revision=None):
        calls.append((repo_id, filename))
        src = hub / filename
        if not src.is_file():
            raise FileNotFoundError(f"404 {repo_id}/{filename}")
        shutil.copy(src, local_dir / filename)
        return str(local_dir / filename)

    monkeypatch.setattr(registry, "_hub_download", fake_hub_download)
    t = load_tagger("SmilingWolf/wd-vit-tagger-v3", backend="onnx")
    target = tagloom_home / "models" / "wd-vit-tagger-v3"
    assert t.model_dir == target
    assert ("SmilingWolf/wd-vit-tagger-v3", "model.onnx") in calls
    assert ("SmilingWolf/wd-vit-tagger-v3", "model.safetensors") not in calls  # only what onnx needs
    assert sorted(p.name for p in target.iterdir()) == ["model.onnx", "selected_tags.csv"]
    # Second use: present, no network (and it works with offline mode on).
    calls.clear()
    monkeypatch.setenv("TAGLOOM_HF_OFFLINE", "1")
    assert load_tagger("wd-vit-tagger-v3").model_dir == target and calls == []
    # Offline and absent: a clear error, nothing attempted.
    with pytest.raises(TagLoomError, match="offline"):
        load_tagger("SmilingWolf/wd-swinv2-tagger-v3")
    assert calls == []


def test_download_failure_is_a_clear_error(monkeypatch):
    def dead(repo_id, filename, local_dir, revision=None):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(registry, "_hub_download", dead)
    with pytest.raises(TagLoomError, match="could not download model.onnx of SmilingWolf/wd-convnext-tagger-v3"):
        load_tagger("wd-convnext-tagger-v3", backend="onnx")
