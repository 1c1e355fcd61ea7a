"""The one model runtime (tagloom.tagger.runtime, families, bundle): family records drive the input
convention, fixed-batch padding is written once, and Tagger and the caption job get the same
scores through the same engine."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from caption_helpers import make_good_images
from tagger_helpers import tiny_joytag, tiny_model
from tagloom.errors import TagLoomError
from tagloom.tagger import families, runtime
from tagloom.tagger.families import JOYTAG, TAGLOOM, WD_V3, family_of_dir, get_family


def _pixels(n=3, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# --- family records ---------------------------------------------------------------------------------

def test_family_records_drive_layout_channels_and_normalisation():
    px = _pixels()
    wd = WD_V3.to_input(px)
    assert wd.shape == (3, 32, 32, 3) and wd.dtype == np.float32
    assert np.array_equal(wd, px[..., ::-1].astype(np.float32))  # BGR, 0..255, NHWC
    jt = JOYTAG.to_input(px)
    want = ((px.astype(np.float32) / 255.0 - np.float32(families.CLIP_MEAN)) / np.float32(families.CLIP_STD))
    assert jt.shape == (3, 3, 32, 32) and np.array_equal(jt, want.transpose(0, 3, 1, 2))  # RGB, CLIP, NCHW
    # One image (no batch axis) and the torch (GPU decoder) layout give the same numbers.
    assert np.array_equal(JOYTAG.to_input(px[0]), jt[0]) and np.array_equal(WD_V3.to_input(px[1]), wd[1])
    torch = pytest.importorskip("torch")
    nchw = torch.from_numpy(px).permute(0, 3, 1, 2)
    assert np.array_equal(WD_V3.tensor_to_input(nchw).numpy(), wd)
    assert np.abs(JOYTAG.tensor_to_input(nchw).numpy() - jt).max() < 1e-6
    # A new convention is a new record, not new code: RGB NHWC 0..1 without normalisation.
    rgb01 = replace(WD_V3, name="rgb01", channel_order="RGB", pixel_max=1.0)
    assert np.array_equal(rgb01.to_input(px), px.astype(np.float32) / np.float32(255.0))
    assert WD_V3.raw_pixels and not JOYTAG.raw_pixels and not rgb01.raw_pixels
    assert (WD_V3.outputs, JOYTAG.outputs) == ("probs", "logits")
    assert JOYTAG.backends == ("onnx",) and set(WD_V3.backends) == {"onnx", "torch"} == set(TAGLOOM.backends)
    assert JOYTAG.default_thresholds().general == 0.4 and WD_V3.default_thresholds().general == 0.35
    with pytest.raises(TagLoomError, match="unknown model family"):
        get_family("nope")


def test_preprocessing_is_the_records(tmp_path):
    from tagloom.images import square_resized
    from tagloom.tagger.preprocess import PREPROCESSORS, joytag_preprocess, wd_preprocess

    img = Image.fromarray(_pixels(1, 40)[0][:, :30])
    square = np.asarray(square_resized(img, 24), np.uint8)
    assert np.array_equal(wd_preprocess(img, 24), WD_V3.to_input(square))
    assert np.array_equal(joytag_preprocess(img, 24), JOYTAG.to_input(square))
    assert set(PREPROCESSORS) == set(families.FAMILIES)


def test_family_of_a_folder(tmp_path):
    assert family_of_dir(tiny_model()) == "wd"
    assert family_of_dir(tiny_joytag()) == "joytag"
    trained = tiny_model(tmp_path / "trained")
    (trained / "metrics.json").write_text(json.dumps({"best": {}, "history": []}))
    assert family_of_dir(trained) == "tagloom"
    from tagloom.tagger import load_tagger

    t = load_tagger(trained, backend="onnx", device="cpu")
    assert t.family == "tagloom" and t.model_family is TAGLOOM and t.layout == "NHWC"
    ref = load_tagger(tiny_model(), backend="onnx", device="cpu")
    x = np.stack([ref.preprocess(Image.fromarray(p)) for p in _pixels(2, 56)])
    assert np.array_equal(t.predict(x), ref.predict(x))  # the same convention as wd-v3


def test_engine_asks_the_family_record_for_joytag():
    eng = runtime.open_engine(tiny_joytag(), "onnx", "joytag", runtime.EngineOptions(device="cpu"))
    assert eng.layout == "NCHW" and eng.input_size == 32 and eng.output == "logits"
    px = _pixels(2, 32)
    raw = eng.session.run(None, {eng.input_name: JOYTAG.to_input(px)})[0]
    assert np.array_equal(eng.predict(px), runtime.sigmoid(raw))  # logits -> probabilities
    with pytest.raises(TagLoomError, match="ONNX backend only"):
        runtime.open_engine(tiny_joytag(), "torch", "joytag")


# --- fixed batches ----------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 3, 4, 7])
def test_run_in_parts_pads_every_part_to_the_step_and_drops_the_padding(n):
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2) + 1
    seen = []

    def fn(part):
        seen.append(len(part))
        return part * 10

    out = runtime.run_in_parts(x, 3, fn)
    assert out.shape == (n, 2) and np.array_equal(out, x * 10)
    assert set(seen) == {3}
    assert runtime.run_in_parts(x, None, lambda p: p + 1).shape == (n, 2)
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(x)
    assert torch.equal(runtime.run_in_parts(t, 3, lambda p: p * 10), t * 10)


def test_fixed_batch_export_through_tagger_and_caption_engine(tmp_path):
    onnx = pytest.importorskip("onnx")
    from tagloom.caption.decode import decode_file
    from tagloom.caption.engines import OnnxEngine
    from tagloom.tagger import load_tagger

    folder = tmp_path / "fixed"
    shutil.copytree(tiny_model(), folder)
    graph = onnx.load(str(folder / "model.onnx"))
    for value in (graph.graph.input[0], graph.graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_param")
        dim.dim_value = 2
    onnx.save(graph, str(folder / "model.onnx"))
    paths = make_good_images(tmp_path / "img", 5)
    tagger = load_tagger(folder, backend="onnx", device="cpu")
    assert tagger.runner.fixed_batch == 2
    x = np.stack([tagger.preprocess_file(p) for p in paths])
    want = load_tagger(tiny_model(), backend="onnx", device="cpu").predict(x)
    assert np.abs(tagger.predict(x) - want).max() < 1e-5
    pixels = np.stack([decode_file(p, 56).pixels for p in paths])
    assert np.abs(OnnxEngine(folder, "wd", "cpu", threads=1).predict(pixels) - want).max() < 1e-5


# --- one engine for Tagger and the caption job ------------------------------------------------------

@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_tagger_and_caption_job_get_identical_scores_through_one_engine(backend, tmp_path):
    from tagloom.caption.decode import decode_file
    from tagloom.caption.engines import make_engine
    from tagloom.caption.model import CaptionModel, ModelChoice
    from tagloom.tagger import load_tagger

    paths = make_good_images(tmp_path, 4)
    options = runtime.EngineOptions(threads=1, spinning=False)
    tagger = load_tagger(tiny_model(), backend=backend, device="cpu", options=options)
    model = CaptionModel.open(ModelChoice(model=str(tiny_model()), backend=backend))
    engine = make_engine(model, "cpu", precision="fp32", threads=1)
    assert type(tagger.runner) is type(engine) is runtime.ENGINES[backend]
    assert (model.family, model.backend, model.labels.names) == (tagger.family, tagger.backend, tagger.labels.names)
    assert model.thresholds == tagger.thresholds
    ours = tagger.predict(np.stack([tagger.preprocess_file(p) for p in paths]))
    theirs = engine.predict(np.stack([decode_file(p, tagger.input_size).pixels for p in paths]))
    assert np.array_equal(ours, theirs)


def test_precision_is_checked_once():
    with pytest.raises(TagLoomError, match="precision must be one of"):
        runtime.check_precision("fp8")
    with pytest.raises(TagLoomError, match="needs the torch backend"):
        runtime.open_engine(tiny_model(), "onnx", "wd", runtime.EngineOptions(device="cpu", precision="bf16"))
    from tagloom.tagger import load_tagger

    # load_tagger's precision is for the torch backend; an ONNX model runs as exported.
    assert load_tagger(tiny_model(), backend="onnx", device="cpu", precision="bf16").backend == "onnx"
    with pytest.raises(TagLoomError, match="precision"):
        load_tagger(tiny_model(), backend="onnx", device="cpu", precision="fp8")


def test_bundle_is_what_load_tagger_and_the_caption_model_open(tmp_path):
    from tagloom.caption.model import CaptionModel, ModelChoice
    from tagloom.tagger.bundle import open_bundle

    d = tiny_model(tmp_path / "m")
    (d / "threshold.json").write_text(json.dumps({"general": 0.5}))
    bundle = open_bundle(d)
    assert bundle.backend == "onnx" and bundle.family is WD_V3 and bundle.thresholds.general == 0.5
    assert bundle.input_size == 56 and len(bundle.labels) > 0
    cm = CaptionModel.open(ModelChoice(model=str(d), thresholds={"character": 0.9}))
    assert cm.thresholds == bundle.thresholds.with_overrides(character=0.9)
    with pytest.raises(TagLoomError, match="within 0..1"):
        CaptionModel.open(ModelChoice(model=str(d), thresholds={"general": 2}))
    # A JoyTag folder opened by path gets its family's reference thresholds (0.4).
    assert open_bundle(tiny_joytag()).thresholds.general == 0.4


def test_int8_runs_a_quantized_copy_on_the_cpu(tmp_path, monkeypatch):
    """precision int8: the ONNX model's MatMul/Gemm weights quantized once into the cache (never the
    model folder), reused, the same labels, scores close to fp32; refused on CUDA and on torch."""
    pytest.importorskip("onnx")
    from tagloom.tagger import load_tagger
    from tagloom.tagger.quantize import int8_path

    monkeypatch.setenv("TAGLOOM_HOME", str(tmp_path / "home"))
    folder = tiny_model(tmp_path / "m")
    before = sorted(p.name for p in folder.iterdir())
    px = _pixels(4, 56, seed=3)  # the tiny model's input side
    fp32 = load_tagger(folder, backend="onnx", device="cpu")
    int8 = load_tagger(folder, backend="onnx", device="cpu", precision="int8")
    assert int8.runner.precision == "int8" and fp32.runner.precision == "fp32"
    cached = int8_path(folder / "model.onnx")
    assert cached.is_file() and cached.parent == tmp_path / "home" / "cache" / "int8"
    assert sorted(p.name for p in folder.iterdir()) == before  # the user's folder is left alone
    a, b = fp32.predict(WD_V3.to_input(px)), int8.predict(WD_V3.to_input(px))
    assert a.shape == b.shape and np.abs(a - b).max() < 0.05
    import onnx

    ops = {n.op_type for n in onnx.load(str(cached)).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    mtime = cached.stat().st_mtime_ns
    load_tagger(folder, backend="onnx", device="cpu", precision="int8")
    assert cached.stat().st_mtime_ns == mtime  # reused, not quantized again
    with pytest.raises(TagLoomError, match="int8 runs on the CPU"):
        runtime.open_engine(folder, "onnx", "wd", runtime.EngineOptions(device="cuda", precision="int8"))
    pytest.importorskip("timm")
    with pytest.raises(TagLoomError, match="int8 is for ONNX models on the CPU"):
        load_tagger(folder, backend="torch", device="cpu", precision="int8")


def test_int8_of_a_file_that_is_not_a_model_names_it(tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    from tagloom.errors import InputFileError
    from tagloom.tagger.quantize import int8_model

    monkeypatch.setenv("TAGLOOM_HOME", str(tmp_path / "home"))
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx graph")
    with pytest.raises(InputFileError, match="model.onnx.*cannot be quantized"):
        int8_model(bad)
    assert not any((tmp_path / "home" / "cache" / "int8").iterdir())  # nothing half-written left
