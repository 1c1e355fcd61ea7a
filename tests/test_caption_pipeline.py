"""The fast path gives the single-image path's answers: batched, pipelined, on every decoder and engine.

Reference = tagloom.tagger's per-image float32 ONNX path (load_tagger + preprocess_file + predict,
one image per call). All real: tiny EVA-02 on ONNX Runtime and torch/timm, real JPEG/PNG files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from caption_helpers import make_awkward_images, make_good_images, reference_probs, reference_results, tiny_model
from tagloom.caption import CaptionJob, ModelChoice, run_caption
from tagloom.caption.decode import CpuDecoder, decode_file
from tagloom.caption.engines import OnnxEngine, TorchEngine


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("pipeline")
    good = make_good_images(folder, 10, sizes=((96, 64), (64, 120), (300, 200), (56, 56), (40, 30)))
    awkward = make_awkward_images(folder)
    return good + [awkward[k] for k in ("cmyk", "png16", "rgba", "palette", "animated", "webp")]


def _cpu_batch(paths, size, mode="thread", workers=2):
    with CpuDecoder(size, workers=workers, mode=mode) as dec:
        items = list(dec.map(paths))
    assert all(i.error is None for i in items), [i.error for i in items]
    assert [i.path for i in items] == list(paths)  # order kept
    return np.stack([i.pixels for i in items])


def test_decoded_pixels_are_the_reference_preprocessing(images):
    from tagloom.tagger import load_tagger

    tagger = load_tagger(tiny_model(), backend="onnx", device="cpu")
    for p in images:
        ours = decode_file(p, tagger.input_size).pixels
        ref = tagger.preprocess_file(p)  # float32 BGR
        assert np.array_equal(ours[..., ::-1].astype(np.float32), ref), p.name


def test_batched_onnx_scores_match_single_image_reference(images):
    ref = reference_probs(tiny_model(), images)
    engine = OnnxEngine(tiny_model(), "wd", "cpu", threads=2)
    probs = np.concatenate([engine.predict(_cpu_batch(images[i : i + 7], 56)) for i in range(0, len(images), 7)])
    assert probs.shape == ref.shape
    assert np.abs(probs - ref).max() < 1e-3
    assert ref.std() > 0.05  # the tiny model's scores really vary, so the comparison means something


def test_batched_torch_fp32_scores_match_single_image_reference(images):
    ref = reference_probs(tiny_model(), images)
    engine = TorchEngine(tiny_model(), "cpu", precision="auto")
    assert engine.precision == "fp32"
    probs = engine.predict(_cpu_batch(images, 56))
    assert np.abs(probs - ref).max() < 1e-3


def test_process_pool_decoding_gives_the_same_pixels(images):
    a = _cpu_batch(images[:4], 56, "thread")
    b = _cpu_batch(images[:4], 56, "process")
    assert np.array_equal(a, b)


def test_whole_job_equals_single_image_tags(tmp_path, images):
    import shutil

    root = tmp_path / "ds"
    root.mkdir()
    for p in images:
        shutil.copy(p, root / p.name)
    job = CaptionJob(root, ModelChoice(model=str(tiny_model()), thresholds={"general": 0.3}), fmt="jsonl", batch_size=4)
    summary = run_caption(job)
    assert summary.done == len(images) and not summary.failed
    got = {json.loads(line)["file"]: json.loads(line) for line in (root / "captions.jsonl").read_text().splitlines()}
    from tagloom.tagger import Thresholds, interpret, load_tagger

    tagger = load_tagger(tiny_model(), backend="onnx", device="cpu")
    for p in images:
        res = interpret(tagger.predict(tagger.preprocess_file(root / p.name)[None])[0], tagger.labels,
                        Thresholds(general=0.3)).to_json()
        mine = got[p.name]
        for key in ("caption", "tags"):
            assert mine[key] == res[key], p.name
        for group in ("ratings", "general", "character", "artist"):
            assert mine[group].keys() == res[group].keys()
            assert all(abs(mine[group][t] - res[group][t]) < 1e-3 for t in res[group])


def test_torch_decoder_matches_pil_within_one_level_and_falls_back(images, tmp_path):
    """The GPU decode path (nvjpeg on CUDA) run here with torchvision's CPU decoder: same code."""
    pytest.importorskip("torchvision")
    from tagloom.caption.gpu import TorchDecoder, jpeg_info

    awkward = make_awkward_images(tmp_path / "awk")
    paths = list(images) + [awkward["truncated"], awkward["not_image"]]
    with TorchDecoder(56, "cpu", workers=2) as dec:
        batch, ok, failed = dec.decode_batch(paths)
    assert ok == list(images)
    assert sorted(Path(p).name for p, _ in failed) == ["notes.png", "truncated.jpg"]
    assert batch.shape == (len(images), 3, 56, 56)
    ref = _cpu_batch(images, 56)
    diff = np.abs(batch.permute(0, 2, 3, 1).numpy().astype(int) - ref.astype(int))
    jpeg = [i for i, p in enumerate(images) if p.suffix == ".jpg" and jpeg_info(p.read_bytes())[2] == 3]
    assert len(jpeg) >= 10
    assert diff[jpeg].max() <= 1  # resize on the tensor side: PIL's kernel, rounded per pass like PIL
    other = [i for i in range(len(images)) if i not in jpeg]
    assert diff[other].max() == 0  # non-JPEG and CMYK JPEG: the exact CPU path
    assert jpeg_info(awkward["cmyk"].read_bytes())[2] == 4  # CMYK goes to the CPU, never to nvjpeg
    probs = OnnxEngine(tiny_model(), "wd", "cpu").predict(batch)
    assert np.abs(probs - reference_probs(tiny_model(), images)).max() < 0.05


def test_torch_decoder_sends_rotated_jpegs_to_the_exact_cpu_path(tmp_path):
    """nvjpeg ignores EXIF orientation: a rotated photo must not reach it."""
    pytest.importorskip("torchvision")
    from PIL import Image

    from tagloom.caption.gpu import TorchDecoder, jpeg_info

    src = make_good_images(tmp_path, 1, sizes=((120, 60),))[0]
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.open(src).save(rotated, quality=90, exif=exif)
    assert jpeg_info(rotated.read_bytes())[3] == 6 and jpeg_info(src.read_bytes())[3] == 1
    with TorchDecoder(56, "cpu", workers=1) as dec:
        batch, ok, failed = dec.decode_batch([rotated])
    assert np.array_equal(batch[0].permute(1, 2, 0).numpy(), decode_file(rotated, 56).pixels)


def test_job_with_gpu_decoder_and_torch_engine_on_cpu(tmp_path, images):
    """`--decode gpu --backend torch` end to end (the CUDA configuration, on the CPU here)."""
    import shutil

    root = tmp_path / "ds"
    root.mkdir()
    for p in images[:6]:
        shutil.copy(p, root / p.name)
    job = CaptionJob(root, ModelChoice(model=str(tiny_model()), backend="torch"), decode="gpu", device="cpu",
                     batch_size=4)
    summary = run_caption(job)
    assert summary.done == 6 and summary.provider.startswith("torch:cpu")
    ref = reference_results(tiny_model(), [root / p.name for p in images[:6]], root)
    same = sum((root / name).with_suffix(".txt").read_text() == r["tags"] for name, r in ref.items())
    assert same >= 5  # +-1 pixel level may flip a tag sitting right on the threshold, rarely


@pytest.mark.gpu
def test_cuda_fast_path_matches_reference(tmp_path, images):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (nvjpeg decode, bf16 model); none in this environment")
    engine = TorchEngine(tiny_model(), "cuda", precision="fp32")
    from tagloom.caption.gpu import TorchDecoder

    with TorchDecoder(56, "cuda") as dec:
        batch, ok, failed = dec.decode_batch(list(images))
    probs = engine.predict(batch)
    assert np.abs(probs - reference_probs(tiny_model(), ok)).max() < 0.05
    # The whole job with the CUDA defaults (torch backend, bf16 weights, nvjpeg decoding).
    import shutil

    root = tmp_path / "ds"
    root.mkdir()
    for p in images:
        shutil.copy(p, root / p.name)
    summary = run_caption(CaptionJob(root, ModelChoice(model=str(tiny_model())), device="cuda", batch_size=8))
    assert summary.done == len(images) and summary.provider.startswith("torch:cuda"), summary.text()


def test_joytag_folder_captions_like_the_single_image_path(tmp_path, images):
    """The other model family (NCHW, CLIP mean/std, logits; no config.json: size from the ONNX input)."""
    import shutil

    from tagger_helpers import tiny_joytag
    from tagloom.tagger import load_tagger

    root = tmp_path / "ds"
    root.mkdir()
    for p in images[:5]:
        shutil.copy(p, root / p.name)
    summary = run_caption(CaptionJob(root, ModelChoice(model=str(tiny_joytag())), fmt="jsonl", batch_size=2))
    assert summary.done == 5
    got = {json.loads(line)["file"]: json.loads(line) for line in (root / "captions.jsonl").read_text().splitlines()}
    tagger = load_tagger(tiny_joytag(), device="cpu")
    for p in images[:5]:
        ref = tagger.interpret(tagger.predict(tagger.preprocess_file(root / p.name)[None])[0]).to_json()
        assert got[p.name]["tags"] == ref["tags"]
        assert all(abs(got[p.name]["general"][t] - s) < 1e-3 for t, s in ref["general"].items())


def test_cuda_plan_fetches_torch_weights_for_a_known_model(tmp_path, monkeypatch, tagloom_home):
    """On CUDA an 'auto' backend captions with torch (bf16, GPU decoding): for a known hub model whose
    ONNX copy is already there, the plan fetches model.safetensors + config.json beside it. Planning
    touches no GPU, so it runs here; only the hub call is replaced (tests cannot reach the hub), by a
    copy from a local folder that plays the repo. On the CPU nothing more is fetched; JoyTag (ONNX
    only) and offline mode keep the ONNX copy."""
    import shutil

    from tagger_helpers import tiny_joytag
    from tagger_helpers import tiny_model as tagger_tiny_model
    from tagloom.caption.job import plan_model
    from tagloom.tagger import registry

    hub = tagger_tiny_model(tmp_path / "hub")
    calls = []

    def fake_hub_download(repo_id, filename, local_dir, revision=None):
        calls.append(filename)
        if not (hub / filename).is_file():
            raise FileNotFoundError(f"404 {repo_id}/{filename}")
        shutil.copy(hub / filename, Path(local_dir) / filename)
        return str(Path(local_dir) / filename)

    monkeypatch.setattr(registry, "_hub_download", fake_hub_download)
    job = CaptionJob(tmp_path, ModelChoice(model="wd-vit-tagger-v3"))
    target = tagloom_home / "models" / "wd-vit-tagger-v3"

    assert plan_model(job, "cpu").backend == "onnx"
    assert "model.onnx" in calls and "model.safetensors" not in calls
    assert not (target / "model.safetensors").exists()

    monkeypatch.setenv("TAGLOOM_HF_OFFLINE", "1")  # offline, without the torch files: ONNX, no error
    calls.clear()
    assert plan_model(job, "cuda").backend == "onnx" and calls == []

    monkeypatch.delenv("TAGLOOM_HF_OFFLINE")
    model = plan_model(job, "cuda")
    assert model.backend == "torch" and model.path == target
    assert {"config.json", "model.safetensors"} <= set(calls)
    assert (target / "model.onnx").is_file()  # the ONNX copy stays for CPU runs
    calls.clear()
    assert plan_model(job, "cuda:1").backend == "torch" and calls == []  # second time: local

    joy = CaptionJob(tmp_path, ModelChoice(model=str(tiny_joytag(tmp_path / "joy"))))
    assert plan_model(joy, "cuda").backend == "onnx"
    forced = CaptionJob(tmp_path, ModelChoice(model="wd-vit-tagger-v3", backend="onnx"))
    assert plan_model(forced, "cuda").backend == "onnx"


def test_torch_engine_bf16_and_compiled_runs_here(images):
    """The CUDA defaults' arithmetic (bf16 weights, torch.compile with the short last batch padded to
    one shape) on the CPU, where it can run: the same engine code, only the device differs. bf16
    moves scores by about 1e-2; the tag strings of the job tests stay on fp32. Compiling takes
    ~25 s here (inductor builds C++ kernels), which is why only this test compiles."""
    ref = reference_probs(tiny_model(), images)
    pixels = np.stack([np.asarray(decode_file(p, 56).pixels) for p in images])
    bf16 = TorchEngine(tiny_model(), "cpu", precision="bf16")
    assert np.abs(bf16.predict(pixels) - ref).max() < 0.05
    compiled = TorchEngine(tiny_model(), "cpu", precision="bf16", compile=True, batch_size=len(images) - 1)
    assert compiled.provider == "torch:cpu:bf16:compiled"
    full, short = compiled.predict(pixels[:-1]), compiled.predict(pixels[-1:])  # one shape, padded
    assert short.shape == (1, ref.shape[1])
    assert np.abs(np.concatenate([full, short]) - ref).max() < 0.05


def test_onnx_engine_binds_torch_pixels_in_place(images):
    """Pixels from the torch decoder go into ONNX Runtime through IO binding (on CUDA: no copy to
    the host). Here the same code binds CPU tensors: the scores equal the numpy path's, also when
    a model with a fixed batch size makes it run the batch in parts."""
    torch = pytest.importorskip("torch")
    pixels = np.stack([np.asarray(decode_file(p, 56).pixels) for p in images])
    engine = OnnxEngine(tiny_model(), "wd", "cpu", threads=2)
    expected = engine.predict(pixels)
    tensor = torch.from_numpy(pixels).permute(0, 3, 1, 2)  # what TorchDecoder hands over: RGB NCHW uint8
    assert np.abs(engine.predict(tensor) - expected).max() < 1e-6
    engine.fixed_batch = 3  # as an export with its batch size baked in
    assert np.abs(engine.predict(tensor) - expected).max() < 1e-6


def test_auto_decoder_choice():
    """Where 'auto' decodes: on the GPU when the engine takes GPU pixels and torchvision is there."""
    pytest.importorskip("torchvision", reason="'auto' picks the GPU decoder only where torchvision is installed")
    from tagloom.caption.job import choose_decoder

    assert choose_decoder("auto", "cpu", "torch", "wd") == "cpu"
    assert choose_decoder("auto", "cuda", "torch", "wd") == "gpu"
    assert choose_decoder("auto", "cuda:1", "onnx", "wd") == "gpu"  # IO binding
    assert choose_decoder("auto", "cuda", "onnx", "joytag") == "cpu"  # normalised on the host
    assert choose_decoder("cpu", "cuda", "torch", "wd") == "cpu"
    assert choose_decoder("gpu", "cpu", "onnx", "wd") == "gpu"
