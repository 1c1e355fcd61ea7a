"""Batched inference engines for caption jobs: uint8 square pixels in, probabilities out.

Input: a batch of the square RGB pixels the decoders make, either a numpy uint8 array
(B, S, S, 3) from the CPU decoders or a torch uint8 tensor (B, 3, S, S) already on the GPU from
the GPU decoder. Output: float32 numpy (B, L) sigmoid probabilities, the same numbers the
single-image path (tagloom.tagger.backends) gives in float32.

Why our own engines rather than the tagger's backends: a folder job wants different settings from
one interactive image. ONNX Runtime: all cores but no busy-spinning threads (spinning would steal
the cores the decoders need between batches), IO binding from GPU tensors on CUDA. Torch: weights
in bf16/fp16 on CUDA (faster than autocast over fp32 weights), channels-last, optional
torch.compile with the batch padded to one shape so it compiles once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tagloom import names
from tagloom.errors import InputFileError, TagLoomError
from tagloom.tagger.backends import onnx_session, sigmoid

CLIP_MEAN = np.asarray((0.48145466, 0.4578275, 0.40821073), np.float32)
CLIP_STD = np.asarray((0.26862954, 0.26130258, 0.27577711), np.float32)
PRECISIONS = names.PRECISIONS


def to_model_input(pixels: np.ndarray, family: str) -> np.ndarray:
    """uint8 RGB (B, S, S, 3) -> the family's float32 input, exactly as tagloom.tagger.preprocess."""
    if family == "joytag":
        x = pixels.astype(np.float32) / 255.0
        x = (x - CLIP_MEAN) / CLIP_STD
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
    return np.ascontiguousarray(pixels[..., ::-1], dtype=np.float32)  # wd: BGR 0..255 NHWC


class OnnxEngine:
    name = "onnx"

    def __init__(self, model_dir: Path, family: str = "wd", device: str = "cpu", threads: int | None = None):
        from tagloom.caption.decode import default_workers

        self.path = Path(model_dir) / "model.onnx"
        if not self.path.is_file():
            raise InputFileError(self.path, "missing: no ONNX weights (model.onnx) in the model folder")
        self.family = family
        # Idle ORT threads spin for a while by default; in a pipeline that burns the cores the
        # decoders are waiting for: 15 -> 18 img/s on 2 cores (docs/benchmarks.md, caption section).
        self.session, self.provider, self.device = onnx_session(
            self.path, device, threads=threads or default_workers(), spinning=False)
        inp = self.session.get_inputs()[0]
        self.input_name, self.output_name = inp.name, self.session.get_outputs()[0].name
        shape = list(inp.shape)
        side = shape[1] if family != "joytag" else shape[-1]
        self.input_size = side if isinstance(side, int) else None
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.logits = family == "joytag"

    def predict(self, pixels) -> np.ndarray:
        if not isinstance(pixels, np.ndarray):  # a torch tensor from the torch decoder
            if self.family == "wd" and pixels.device.type == self.device:
                return self._predict_tensor(pixels)
            pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()
        x = to_model_input(pixels, self.family)
        step = self.fixed_batch or max(len(x), 1)
        outs = []
        for i in range(0, len(x), step):
            part = x[i : i + step]
            if len(part) < step:  # a fixed-batch export refuses a short part: pad, drop the padding's rows
                part = np.concatenate([part, np.zeros((step - len(part), *part.shape[1:]), part.dtype)])
            outs.append(self.session.run([self.output_name], {self.input_name: part})[0][: len(x) - i])
        out = np.concatenate(outs, axis=0).astype(np.float32).reshape(len(x), -1)
        return sigmoid(out) if self.logits else out

    def _predict_tensor(self, pixels) -> np.ndarray:
        """Torch pixels into ONNX Runtime through IO binding, where they lie: from the GPU decoder
        no host round trip. The same code binds CPU tensors, which is how it is tested here."""
        import torch

        x = pixels.flip(1).permute(0, 2, 3, 1).float().contiguous()  # RGB NCHW -> BGR NHWC float
        n = len(x)
        step = self.fixed_batch or max(n, 1)
        if n % step:  # a fixed-batch export refuses a short part: pad, drop the padding's rows
            x = torch.cat([x, x.new_zeros((step - n % step, *x.shape[1:]))])
        kind, index = x.device.type, x.device.index or 0
        if kind == "cuda":
            # ONNX Runtime reads the buffer on its own CUDA stream: the kernels torch queued to
            # fill it must have finished first, or the model would read half-written pixels.
            torch.cuda.current_stream(x.device).synchronize()
        outs = []
        for i in range(0, len(x), step):
            part = x[i : i + step]
            binding = self.session.io_binding()
            binding.bind_input(self.input_name, kind, index, np.float32, list(part.shape), part.data_ptr())
            binding.bind_output(self.output_name, kind, index)
            self.session.run_with_iobinding(binding)
            outs.append(np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32).reshape(len(part), -1))
        return np.concatenate(outs, axis=0)[:n]

    def close(self):
        self.session = None


def auto_precision(device) -> str:
    """'bf16' on GPUs with bf16 hardware (compute capability 8.0+: Ampere, Ada, Hopper, ...), else
    'fp32'. Older GPUs (T4, the RTX 20 and GTX 10 series, V100) accept bf16 tensors but emulate
    the arithmetic (slower than fp32, and some cuBLAS bf16 GEMMs are refused on Pascal), so the
    reference precision is both the correct and the faster choice there."""
    import torch

    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp32"


class TorchEngine:
    """A timm wd-style tagger (config.json + model.safetensors)."""

    name = "torch"

    def __init__(self, model_dir: Path, device: str = "cpu", precision: str = "auto", compile: bool = False,
                 batch_size: int = 0):
        import torch

        from tagloom.tagger.backends import torch_device
        from tagloom.tagger.timm_model import input_size, load_model, mean_std, read_config

        config = read_config(Path(model_dir))
        self.input_size = input_size(config)
        self.torch_device = torch_device(device)
        self.device = self.torch_device.type
        if precision not in PRECISIONS:
            raise TagLoomError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision == "auto":
            precision = auto_precision(self.torch_device)
        self.precision = precision
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.provider = f"torch:{self.torch_device}:{precision}" + (":compiled" if compile else "")
        mean, std = mean_std(config)
        net = load_model(Path(model_dir)).to(self.torch_device, dtype=self.dtype).eval()
        if self.device == "cuda":
            net = net.to(memory_format=torch.channels_last)
        if compile:
            # max-autotune on CUDA: the mode behind ../shared/README.md's 508 img/s for EVA-02 Large
            # in bf16 (230 eager). Autotuning costs minutes once (inductor caches it on disk); on the
            # CPU it would only slow the build.
            net = torch.compile(net, mode="max-autotune-no-cudagraphs" if self.device == "cuda" else "default", dynamic=False)
        self.net = net
        self.compiled = compile
        self.batch_size = batch_size
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.torch_device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.torch_device).view(1, 3, 1, 1)
        self._torch = torch
        if compile and batch_size and self.input_size:
            # Compile now, on the one padded shape every batch will have: otherwise the first batch
            # compiles (minutes with max-autotune), which the job would count as captioning time
            # ("model load 3 s, then N images/s") and bench/caption.py's warm-up job could not
            # absorb (each job builds a new engine, so it compiles again).
            s = self.input_size
            try:
                self.predict(torch.zeros((batch_size, 3, s, s), dtype=torch.uint8, device=self.torch_device))
            except Exception as e:  # no C++ compiler / Triton (Windows), an unsupported op, ...
                raise TagLoomError(f"torch.compile failed for {Path(model_dir).name} on {self.torch_device} "
                                   f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}); "
                                   "run without --compile") from e

    def predict(self, pixels) -> np.ndarray:
        torch = self._torch
        if isinstance(pixels, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(pixels))
            if self.device == "cuda":
                x = x.pin_memory().to(self.torch_device, non_blocking=True)
            x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW, still RGB uint8
        else:
            x = pixels.to(self.torch_device, non_blocking=True)
        n = x.shape[0]
        if self.compiled and self.batch_size and n < self.batch_size:
            # One input shape: a short last batch would otherwise trigger a second compilation.
            pad = x.new_zeros((self.batch_size - n, *x.shape[1:]))
            x = torch.cat([x, pad])
        with torch.inference_mode():
            # Same arithmetic as the wd wrapper (tagloom.tagger.export): BGR, /255, (x-mean)/std.
            x = x.flip(1).to(torch.float32) / 255.0
            x = ((x - self.mean) / self.std).to(self.dtype)
            # One memory layout whatever the source (a numpy NHWC batch arrives as a permuted view,
            # a padded or GPU-decoded batch as plain NCHW): torch.compile(dynamic=False) guards on
            # strides, and a second layout would compile the model a second time.
            x = x.contiguous(memory_format=torch.channels_last if self.device == "cuda" else torch.contiguous_format)
            probs = torch.sigmoid(self.net(x).float())
        return probs[:n].cpu().numpy()

    def close(self):
        self.net = None
        if self.device == "cuda":
            self._torch.cuda.empty_cache()


def make_engine(model, device: str, precision: str = "auto", compile: bool = False, threads: int | None = None,
                batch_size: int = 0):
    """The engine for a CaptionModel (tagloom.caption.model) on 'cpu' or 'cuda[:N]'."""
    if model.backend == "torch":
        return TorchEngine(model.path, device, precision, compile, batch_size)
    if precision not in ("auto", "fp32"):
        raise TagLoomError(f"precision {precision} needs the torch backend (--backend torch); ONNX models run as exported")
    return OnnxEngine(model.path, model.family, device, threads)
