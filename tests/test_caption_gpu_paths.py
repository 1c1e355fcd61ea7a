"""The CUDA-only code paths of the captioner and tagger, run here on the CPU where they can be.

No GPU is lent to this project: each test runs the device code with device='cpu' (torchvision's CPU
decoder stands in for nvjpeg) and checks what would decide the GPU behaviour: which files reach the
GPU decoder, what the engine sees, which device a job ends up on. Where a GPU-only condition must
be simulated (a GPU that torch reports, an onnxruntime that lists CUDA), the test says so.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from caption_helpers import make_awkward_images, make_good_images, tiny_model
from tagloom.caption.decode import decode_file


def _spy_gpu_decoder(dec):
    """Record the bytes TorchDecoder hands to its GPU (nvjpeg) decoder."""
    sent = []
    real = dec._decode_jpegs

    def spy(datas):
        sent.extend(datas)
        return real(datas)

    dec._decode_jpegs = spy
    return sent


def test_gpu_decoder_never_gets_truncated_or_rgb_coded_jpegs(tmp_path):
    """nvjpeg may decode a cut-short JPEG to a half-grey picture without an error, and is not known
    to honour JPEGs that store RGB instead of YCbCr (Adobe transform 0): both must take the exact
    CPU path, which reports the truncated file and decodes the RGB one with libjpeg's colours.
    A file with junk after its end marker also goes there (correct, just not accelerated)."""
    pytest.importorskip("torchvision")
    from PIL import Image

    from tagloom.caption.gpu import TorchDecoder, jpeg_info

    good = make_good_images(tmp_path, 2, sizes=((96, 64), (64, 80)))
    awkward = make_awkward_images(tmp_path / "awk")
    rgb_coded = tmp_path / "rgb_coded.jpg"
    Image.open(good[0]).save(rgb_coded, quality=90, keep_rgb=True)  # Adobe APP14, transform 0
    assert b"Adobe" in rgb_coded.read_bytes()[:64]
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(good[1].read_bytes() + b"\x00" * 16)  # zero padding after EOI: still fine
    trailer = tmp_path / "trailer.jpg"
    trailer.write_bytes(good[1].read_bytes() + b"camera trailer")

    assert jpeg_info(awkward["truncated"].read_bytes()) is None
    assert jpeg_info(rgb_coded.read_bytes()) is None
    assert jpeg_info(trailer.read_bytes()) is None
    assert jpeg_info(padded.read_bytes())[:3] == (64, 80, 3)
    assert jpeg_info(good[0].read_bytes()) == (96, 64, 3, 1)
    data = bytearray(good[0].read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 4] = 12  # a 12-bit frame header: never for nvjpeg
    assert jpeg_info(bytes(data)) is None

    paths = [good[0], awkward["truncated"], rgb_coded, padded, trailer]
    with TorchDecoder(56, "cpu", workers=1) as dec:
        sent = _spy_gpu_decoder(dec)
        batch, ok, failed = dec.decode_batch(paths)
    assert sent == [good[0].read_bytes(), padded.read_bytes()]
    assert ok == [good[0], rgb_coded, padded, trailer]
    assert [(Path(p).name, "truncated" in r) for p, r in failed] == [("truncated.jpg", True)]
    for k in (1, 3):  # rgb_coded, trailer: the single-image path exactly
        assert np.array_equal(batch[k].permute(1, 2, 0).numpy(), decode_file(ok[k], 56).pixels)


def test_node_auto_on_a_comfyui_gpu_runs_an_onnx_only_model(comfy, comfy_pack, monkeypatch):
    """In ComfyUI on a GPU (stub: model_management says cuda), device 'auto' must stay 'auto': an
    explicit 'cuda' made an ONNX model (JoyTag, a folder without torch weights) fail with "device
    'cuda' was asked for" whenever onnxruntime has no working CUDA (the plain onnxruntime wheel)."""
    import torch

    mm = comfy["comfy.model_management"]
    freed = []
    monkeypatch.setattr(mm, "get_torch_device", lambda: torch.device("cuda", 0))
    monkeypatch.setattr(mm, "free_memory", lambda *a, **k: freed.append(a))
    input_dir = Path(comfy["folder_paths"].get_input_directory())
    imgs = make_good_images(input_dir / "gpu_host", 3)
    out = comfy_pack.NODE_CLASS_MAPPINGS["TagLoomCaptionFolder"]().caption(
        "gpu_host", str(tiny_model()), "txt", batch_size=2, backend="onnx")
    assert out["result"][1:] == (3, 0, 0), out["result"][0]
    assert all(i.with_suffix(".txt").is_file() for i in imgs)
    assert freed  # room is still made on ComfyUI's GPU before loading


def test_auto_job_falls_back_to_the_cpu_when_onnxruntime_cannot_start_cuda(tmp_path, monkeypatch):
    """A GPU, an ONNX model, and an onnxruntime-gpu that lists CUDA but cannot start it (CUDA/cuDNN
    libraries missing or of another version: common beside a newer torch). 'auto' must caption on
    the CPU (decoding there too) and say so, not stop with an error. Simulated here: resolve_device
    reports a GPU and _ort_has_cuda says the provider is listed; the CPU onnxruntime then plays the
    session that fell back."""
    from tagloom.caption import CaptionJob, ModelChoice, run_caption
    from tagloom.caption import job as job_module

    monkeypatch.setattr(job_module, "resolve_device", lambda d: "cuda" if d == "auto" else d)
    monkeypatch.setattr(job_module, "_ort_has_cuda", lambda: True)
    root = tmp_path / "ds"
    make_good_images(root, 3)
    summary = run_caption(CaptionJob(root, ModelChoice(model=str(tiny_model()), backend="onnx"), batch_size=2))
    assert summary.done == 3 and not summary.failed, summary.text()
    assert summary.device == "cpu" and summary.provider == "CPUExecutionProvider"


def test_compiled_engine_compiles_once_at_load_for_every_batch_kind(monkeypatch, tmp_path):
    """torch.compile(dynamic=False) guards on shape and strides. The engine pads short batches to
    one shape; every batch must also reach the model in one memory layout (a numpy batch arrives
    as a permuted NHWC view, a padded or GPU-decoded one as plain NCHW: on the CPU these compiled
    twice), and the compile must happen while the model loads, so a job's images/s (and
    bench/caption.py's compile row) does not include it. torch.compile is given a counting
    backend that runs the traced graph eagerly: real Dynamo tracing and guards, no inductor build."""
    import torch

    from tagloom.caption.engines import TorchEngine

    real_compile = torch.compile
    graphs = []

    def counting(gm, example_inputs):
        graphs.append([tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor) and t.dim() == 4])
        return gm.forward

    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend=counting, dynamic=kw.get("dynamic")))
    torch._dynamo.reset()
    pixels = np.stack([decode_file(p, 56).pixels for p in make_good_images(tmp_path, 5)])
    engine = TorchEngine(tiny_model(), "cpu", precision="bf16", compile=True, batch_size=4)
    assert len(graphs) == 1 and graphs[0][0] == (4, 3, 56, 56)  # compiled at load, on the padded shape
    eager = TorchEngine(tiny_model(), "cpu", precision="bf16")
    ref = eager.predict(pixels)
    full = engine.predict(pixels[:4])  # numpy NHWC (CPU decoders)
    short = engine.predict(pixels[4:])  # short last batch, padded
    tensor = engine.predict(torch.from_numpy(pixels[:4]).permute(0, 3, 1, 2).contiguous())  # GPU decoder's layout
    one = engine.predict(pixels[1:2])  # the one-by-one fallback after a failed batch
    assert len(graphs) == 1, graphs
    assert short.shape == (1, ref.shape[1]) and one.shape == (1, ref.shape[1])
    for got, want in ((full, ref[:4]), (short, ref[4:]), (tensor, ref[:4]), (one, ref[1:2])):
        assert np.abs(got - want).max() < 0.02

    def broken(gm, example_inputs):  # as inductor without a compiler or Triton (Windows)
        raise RuntimeError("Cannot find a working triton installation")

    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend=broken))
    from tagloom.errors import TagLoomError

    with pytest.raises(TagLoomError, match="torch.compile failed.*without --compile"):
        TorchEngine(tiny_model(), "cpu", precision="bf16", compile=True, batch_size=4)
    torch._dynamo.reset()


def test_gpu_decoder_bounds_frames_per_call_and_never_loses_an_image(tmp_path):
    """nvjpeg allocates all frames of one call together (64 photos of 24 MP: 4.6 GB beside the
    model), so a batch is decoded in calls of bounded frame bytes; and when squaring one frame fails
    on the GPU (out of memory on a huge photo), that image takes the CPU path instead of the error
    ending the reader thread and with it the whole job."""
    pytest.importorskip("torchvision")
    from tagloom.caption.gpu import TorchDecoder

    paths = make_good_images(tmp_path, 5, sizes=((96, 64), (64, 120), (200, 150), (56, 56)))
    frame_bytes = [3 * w * h for w, h in ((96, 64), (64, 120), (200, 150), (56, 56), (96, 64))]
    calls = []
    with TorchDecoder(56, "cpu", workers=1, decode_bytes_limit=frame_bytes[0] + frame_bytes[1]) as dec:
        real_decode, real_square = dec._decode_jpegs, dec._square

        def decode(datas):
            calls.append(len(datas))
            return real_decode(datas)

        def square(frame):
            if tuple(frame.shape[1:]) == (150, 200):
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return real_square(frame)

        dec._decode_jpegs, dec._square = decode, square
        batch, ok, failed = dec.decode_batch(paths)
    assert calls == [2, 1, 2]  # parts of at most the byte limit; one frame alone may exceed it
    assert ok == paths and not failed
    assert np.array_equal(batch[2].permute(1, 2, 0).numpy(), decode_file(paths[2], 56).pixels)

    # On CUDA nvjpeg writes a call's frames from its own stream without waiting for ours, so every
    # part after the first must wait until our stream has finished with the previous part's frames.
    # A stand-in stream (a fake: no CUDA here) records the waits between the decoder calls.
    events = []

    class Stream:
        def synchronize(self):
            events.append("sync")

    with TorchDecoder(56, "cpu", workers=1, decode_bytes_limit=frame_bytes[0] + frame_bytes[1]) as dec:
        real_decode = dec._decode_jpegs
        dec._decode_jpegs = lambda datas: events.append(len(datas)) or real_decode(datas)
        dec._stream = Stream()
        dec._decode_bytes(paths, [p.read_bytes() for p in paths])
    assert events == [2, "sync", 1, "sync", 2]


def test_fixed_batch_onnx_exports_run_any_number_of_images(tmp_path):
    """An export with its batch size baked in (here 3) must take 4 images: the last part is padded
    and its padding dropped. Before, the tagger's OnnxBackend recursed forever and the caption
    engines (numpy and IO-binding paths) sent a short part that ONNX Runtime refuses."""
    onnx = pytest.importorskip("onnx")
    torch = pytest.importorskip("torch")
    from tagloom.caption.engines import OnnxEngine
    from tagloom.tagger.backends import OnnxBackend

    folder = tmp_path / "fixed"
    shutil.copytree(tiny_model(), folder)
    graph = onnx.load(str(folder / "model.onnx"))
    for value in (graph.graph.input[0], graph.graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_param")
        dim.dim_value = 3
    onnx.save(graph, str(folder / "model.onnx"))
    pixels = np.stack([decode_file(p, 56).pixels for p in make_good_images(tmp_path / "img", 4)])
    want = OnnxEngine(tiny_model(), "wd", "cpu", threads=1).predict(pixels)

    backend = OnnxBackend(folder / "model.onnx", "cpu")
    assert backend.fixed_batch == 3
    x = np.ascontiguousarray(pixels[..., ::-1], dtype=np.float32)
    assert np.abs(backend.run(x) - want).max() < 1e-5
    engine = OnnxEngine(folder, "wd", "cpu", threads=1)
    assert np.abs(engine.predict(pixels) - want).max() < 1e-5
    tensor = torch.from_numpy(pixels).permute(0, 3, 1, 2)  # the GPU decoder's layout: IO binding
    assert np.abs(engine.predict(tensor) - want).max() < 1e-5
    assert engine.predict(pixels[:1]).shape == (1, want.shape[1])


def test_batch_failure_releases_the_failed_call_before_retrying_image_by_image():
    """After a CUDA out-of-memory error on a batch, the job retries image by image. The retries
    must not run while the exception's traceback still holds the failed call's frames (on a GPU:
    the batch's activations), or each retry would run out of memory too. No GPU here: a stand-in
    engine (said plainly: a fake) keeps a large object in its frame and fails on batches > 1."""
    import weakref

    from tagloom.caption.job import _predict

    class Activations:
        pass

    held = []

    class Engine:
        def predict(self, pixels):
            acts = Activations()  # noqa: F841 - lives in this frame, as a forward pass's tensors do
            if len(pixels) > 1:
                held.append(weakref.ref(acts))
                raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
            assert all(ref() is None for ref in held), "the failed batch's frame is still alive"
            return np.ones((1, 2), np.float32)

    failed = []
    out = _predict(Engine(), np.zeros((3, 4, 4, 3), np.uint8), ["a", "b", "c"], failed)
    assert len(out) == 3 and not failed


def test_tagger_nodes_make_room_on_comfyui_gpu_only_when_the_tagger_goes_there(comfy, comfy_pack, monkeypatch):
    """Like the caption node, the tagger loader asks ComfyUI to free GPU memory before loading onto
    its GPU (stub: model_management says cuda); not for the CPU, not for an ONNX model without a CUDA
    onnxruntime, not when the tagger is already loaded. The model itself loads on the CPU here."""
    import torch

    from tagloom import config
    from tagloom.tagger import cache

    mm = comfy["comfy.model_management"]
    freed = []
    monkeypatch.setattr(mm, "get_torch_device", lambda: torch.device("cuda", 0))
    monkeypatch.setattr(mm, "free_memory", lambda *a, **k: freed.append(a))
    shutil.copytree(tiny_model(), config.models_dir() / "tiny-gpu")
    loader = comfy_pack.NODE_CLASS_MAPPINGS["TagLoomTaggerLoader"]()
    try:
        loader.load("tiny-gpu", "onnx", "auto")  # CPU onnxruntime here: the tagger stays off the GPU
        loader.load("tiny-gpu", "torch", "cpu")
        assert freed == []
        (handle,) = loader.load("tiny-gpu", "torch", "auto")  # torch follows ComfyUI onto CUDA
        assert len(freed) == 1 and freed[0][1].type == "cuda"
        comfy_pack.NODE_CLASS_MAPPINGS["TagLoomInterrogate"]().interrogate(handle, torch.zeros((1, 32, 32, 3)))
        assert len(freed) == 1  # already loaded: nothing more to free
    finally:
        cache.free_all()


def test_gpu_decoder_sends_xmp_rotated_jpegs_to_the_cpu_path(tmp_path):
    """Pillow takes the orientation from XMP (tiff:Orientation) when EXIF has none, so the CPU path
    turns such a photo upright; nvjpeg would not. Before, only EXIF was read and the GPU path gave
    the sideways picture."""
    pytest.importorskip("torchvision")
    from PIL import Image

    from tagloom.caption.gpu import TorchDecoder, jpeg_info

    src = make_good_images(tmp_path, 1, sizes=((120, 60),))[0]
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    rotated = tmp_path / "xmp_rotated.jpg"
    Image.open(src).save(rotated, quality=90, xmp=xmp)
    assert jpeg_info(rotated.read_bytes())[3] == 6
    with TorchDecoder(56, "cpu", workers=1) as dec:
        sent = _spy_gpu_decoder(dec)
        batch, ok, failed = dec.decode_batch([rotated])
    assert sent == [] and ok == [rotated]
    assert np.array_equal(batch[0].permute(1, 2, 0).numpy(), decode_file(rotated, 56).pixels)


def test_onnx_session_never_moves_to_the_cpu_behind_our_back(monkeypatch):
    """ONNX Runtime's session.run() answers an execution-provider failure (CUDA error, GPU out of
    memory) by switching the session to the CPU for good and retrying, with only a print: the job
    would go on on the CPU while its summary says CUDA. A session opened with the CUDA provider
    must raise instead. No GPU here: the provider list is made to include CUDA (so the session is
    opened as on a GPU host, ONNX Runtime then uses the CPU), and the native session is wrapped
    (a fake) to fail once the way the CUDA provider does."""
    import onnxruntime as ort
    from onnxruntime.capi import _pybind_state as C

    from tagloom.tagger.backends import onnx_session

    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    session, provider, device = onnx_session(tiny_model() / "model.onnx", "auto")
    assert device == "cpu"  # what it really uses is still reported

    class FailingOnce:
        def __init__(self, inner):
            self.inner, self.failed = inner, False

        def run(self, *args):
            if not self.failed:
                self.failed = True
                raise C.EPFail("CUDA failure 2: out of memory")
            return self.inner.run(*args)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    session._sess = FailingOnce(session._sess)
    x = np.zeros((1, 56, 56, 3), np.float32)
    with pytest.raises(C.EPFail):
        session.run(None, {session.get_inputs()[0].name: x})


@pytest.mark.gpu
def test_cuda_decoder_parts_and_streams_give_the_same_pixels(tmp_path):
    """For a GPU session (skipped here): decoding a batch in many nvjpeg calls (one image each, with
    the side stream synchronised between them) must give exactly the pixels of one call, batch
    after batch (a stream-ordering fault would corrupt some). Prints how far nvjpeg's pixels are
    from PIL's, which no CPU test can measure."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (nvjpeg); none in this environment")
    from tagloom.caption.gpu import TorchDecoder

    paths = make_good_images(tmp_path, 24, sizes=((960, 640), (640, 1200), (2000, 1500), (448, 448)))
    with TorchDecoder(448, "cuda") as whole, TorchDecoder(448, "cuda", decode_bytes_limit=1) as parts:
        for _ in range(3):  # repeated, so freed blocks are really recycled between calls
            a, ok_a, _ = whole.decode_batch(paths)
            b, ok_b, _ = parts.decode_batch(paths)
            torch.cuda.synchronize()
            assert ok_a == ok_b == paths and torch.equal(a, b)
    ref = np.stack([decode_file(p, 448).pixels for p in paths]).astype(int)
    diff = np.abs(a.permute(0, 2, 3, 1).cpu().numpy().astype(int) - ref)
    print(f"nvjpeg + GPU resize vs PIL: max {diff.max()} levels, mean {diff.mean():.3f}")
    assert diff.mean() < 2.0


def test_auto_precision_is_bf16_only_where_the_gpu_has_bf16(monkeypatch):
    """bf16 by default only on compute capability 8.0+; a T4/RTX 20xx (7.5) or GTX 10xx (6.1)
    only emulates it (slower than fp32), so it keeps the reference fp32. The capability query is
    answered by a stand-in (no GPU here)."""
    import torch

    from tagloom.caption.engines import auto_precision

    caps = {0: (7, 5), 1: (8, 0), 2: (9, 0), 3: (6, 1)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: caps[torch.device(d).index or 0])
    assert auto_precision(torch.device("cpu")) == "fp32"
    assert auto_precision(torch.device("cuda", 0)) == "fp32"
    assert auto_precision(torch.device("cuda")) == "fp32"
    assert auto_precision(torch.device("cuda", 1)) == "bf16"
    assert auto_precision(torch.device("cuda", 2)) == "bf16"
    assert auto_precision(torch.device("cuda", 3)) == "fp32"
