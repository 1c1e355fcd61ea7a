"""The one model runtime: ONNX Runtime or torch behind one engine, set up by one options record.

    engine = open_engine(model_dir, "onnx" | "torch", family, EngineOptions(device="cpu", threads=2))
    engine.run(x)            # (N, ...) float32 model input (family.to_input) -> (N, L) probabilities
    engine.predict(pixels)   # uint8 RGB squares: numpy (N, S, S, 3) or torch (N, 3, S, S) -> (N, L)
    engine.run_tensor(t)     # torch model input -> torch probabilities on the engine's device
    engine.close()           # (= unload())

``Tagger`` (tagloom.tagger.api), the batch captioner's local pipeline and its Ray actors
(tagloom.caption) all run models through these two classes; only the options differ:

- ``Tagger``: ONNX Runtime's defaults for one interactive image, and on torch fp32 weights with
  autocast for bf16/fp16 (``autocast=True``);
- a caption job: a fixed number of ORT threads that do not busy-spin between batches (they would
  steal the cores the decoders need), IO binding of GPU-decoded pixels, and on torch weights cast
  to bf16/fp16, channels-last and optionally ``torch.compile`` on one padded batch shape.

What the model expects (layout, channel order, range, normalisation, logits or probabilities) is
the family record's (tagloom.tagger.families), never a test of the family's name. Exports with a
fixed batch size and compiled models run in parts of that size, the last one padded with blank
images whose rows are dropped (``run_in_parts``, the one place that does it).

ONNX Runtime: CUDA provider when asked for (or on ``auto``) and the installed onnxruntime has one,
else CPU. onnxruntime-gpu lists CUDA even on machines without a GPU and then silently falls back, so
``provider``/``device`` report what the session really uses (read back from the session).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tagloom import names
from tagloom.errors import InputFileError, TagLoomError
from tagloom.tagger.families import NHWC, get_family

DEVICES = names.DEVICES
PRECISIONS = names.INFERENCE_PRECISIONS


@dataclass(frozen=True)
class EngineOptions:
    """How an engine runs a model. ``device``: auto | cpu | cuda | cuda:N (an explicit cuda that cannot
    be honoured is an error). ``threads``: ONNX Runtime intra-op threads (None = its default, one per
    core); ``spinning=False`` stops idle ORT threads from busy-waiting. ``io_binding``: feed torch
    tensors to ONNX Runtime where they lie (wd-layout models). ``precision``: auto | fp32 | bf16 |
    fp16 (torch; auto = bf16 on GPUs with bf16 hardware, else fp32) | int8 (ONNX on the CPU: the
    weights quantized once, tagloom.tagger.quantize; ONNX otherwise runs as exported: auto or fp32);
    ``autocast``: keep fp32 weights and autocast (else the weights are cast).
    ``compile``: torch.compile, on the one shape of ``batch_size`` images, at load."""

    device: str = "auto"
    threads: int | None = None
    spinning: bool = True
    io_binding: bool = True
    precision: str = "fp32"
    autocast: bool = False
    compile: bool = False
    batch_size: int = 0


# --- checks and small helpers ------------------------------------------------------------------------

def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logits -> float32 probabilities (computed in float64 so large logits do not overflow)."""
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


def check_device(device: str) -> str:
    device = (device or "auto").lower()
    if device not in DEVICES and not device.startswith("cuda:"):
        raise TagLoomError(f"device must be auto, cpu or cuda, got {device!r}")
    return device


def check_precision(precision: str) -> str:
    """The one precision check: a known name (what each backend accepts is the engine's)."""
    if precision not in PRECISIONS:
        raise TagLoomError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def auto_precision(device) -> str:
    """'bf16' on GPUs with bf16 hardware (compute capability 8.0+: Ampere, Ada, Hopper, ...), else
    'fp32'. Older GPUs (T4, the RTX 20 and GTX 10 series, V100) accept bf16 tensors but emulate
    the arithmetic (slower than fp32, and some cuBLAS bf16 GEMMs are refused on Pascal), so the
    reference precision is both the correct and the faster choice there."""
    import torch

    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp32"


def _pad(part, rows: int):
    if isinstance(part, np.ndarray):
        return np.concatenate([part, np.zeros((rows, *part.shape[1:]), part.dtype)])
    import torch

    return torch.cat([part, part.new_zeros((rows, *part.shape[1:]))])


def run_in_parts(x, step: int | None, fn):
    """``fn`` over the rows of ``x`` (numpy or torch) in parts of exactly ``step`` rows (a fixed-batch
    export, a compiled shape): a short part is padded with zero images and their rows are dropped
    from its output. ``step`` None or 0: one call on ``x`` as it is."""
    n = len(x)
    if not step or n == step:
        return fn(x)
    outs = []
    for i in range(0, max(n, 1), step):
        part = x[i : i + step]
        if len(part) < step:
            part = _pad(part, step - len(part))
        outs.append(fn(part)[: max(0, min(step, n - i))])
    if isinstance(outs[0], np.ndarray):
        return np.concatenate(outs, axis=0)
    import torch

    return torch.cat(outs)


# --- ONNX Runtime -----------------------------------------------------------------------------------

def onnx_session(path, device: str = "auto", threads: int | None = None, spinning: bool = True):
    """An ONNX Runtime session for ``path`` on ``device``: (session, provider, "cuda" | "cpu").

    ``device``: auto (CUDA when the installed onnxruntime has the provider), cpu, cuda or cuda:N.
    ``threads``: intra-op threads (None = ONNX Runtime's default, one per core); setting it also
    runs ops sequentially with one inter-op thread, as a batch job wants. ``spinning=False`` stops
    idle worker threads from busy-waiting (they would steal the cores image decoders need).
    Asking for CUDA and not getting it is an error, never a silent CPU run.
    """
    import onnxruntime as ort

    path = Path(path)
    device = check_device(device)
    available = ort.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if device.startswith("cuda") and not has_cuda:
        raise TagLoomError(
            "device 'cuda' was asked for, but the installed onnxruntime has no CUDA provider "
            f"(providers: {', '.join(available)}); install onnxruntime-gpu (docs/install.md) or use --backend torch"
        )
    so = ort.SessionOptions()
    if threads is not None:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers: list = ["CPUExecutionProvider"]
    if device != "cpu" and has_cuda:
        if hasattr(ort, "preload_dlls"):
            try:  # finds the CUDA/cuDNN libraries torch's wheels brought, when torch is there
                ort.preload_dlls()
            except Exception:
                pass
        dev_id = int(device.split(":", 1)[1]) if ":" in device else 0
        providers = [("CUDAExecutionProvider", {"device_id": dev_id}), "CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(path), so, providers=providers)
    except Exception as e:  # onnxruntime raises its own InvalidProtobuf/Fail/NoSuchFile types
        raise InputFileError(path, f"cannot be loaded by ONNX Runtime: {e}") from e
    if len(providers) > 1:
        # ONNX Runtime's session.run() catches an execution-provider failure (a CUDA/cuDNN error,
        # out of GPU memory) by switching the whole session to the CPU for good and retrying,
        # with only a print: every later batch would run on the CPU while provider/device (read
        # once, below) still say CUDA. Fail instead; callers report it (the caption job retries
        # image by image and names what failed).
        session.disable_fallback()
    # onnxruntime-gpu lists CUDA even without a GPU and then falls back: read back what it uses.
    provider = session.get_providers()[0]
    used = "cuda" if provider == "CUDAExecutionProvider" else "cpu"
    if device.startswith("cuda") and used != "cuda":
        raise TagLoomError("device 'cuda' was asked for, but ONNX Runtime could not start CUDA "
                           "(no GPU, or the CUDA/cuDNN libraries are missing) and fell back to the CPU")
    return session, provider, used


class OnnxEngine:
    """A model.onnx in its family's input convention, on ONNX Runtime."""

    name = "onnx"
    precisions = ("auto", "fp32", "int8")  # the graph as exported, or its int8 copy on the CPU

    @classmethod
    def takes_device_pixels(cls, family) -> bool:
        """Whether pixels decoded on the GPU can go in without a trip through the host."""
        return get_family(family).raw_pixels

    def __init__(self, path, family="wd", options: EngineOptions | None = None):
        """``path``: the model.onnx file or the folder that holds it."""
        options = options or EngineOptions()
        path = Path(path)
        self.path = path / "model.onnx" if path.is_dir() else path
        if not self.path.is_file():
            raise InputFileError(self.path, "missing: no ONNX weights (model.onnx) in the model folder")
        self.model_family = get_family(family)
        self.family = self.model_family.name
        if check_precision(options.precision) not in self.precisions:
            raise TagLoomError(f"precision {options.precision} needs the torch backend (--backend torch); "
                               "ONNX models run as exported (or int8 on the CPU)")
        self.options = options
        self.precision = "int8" if options.precision == "int8" else "fp32"
        run_path = self.path
        if self.precision == "int8":
            from tagloom.tagger.quantize import int8_model

            if check_device(options.device).startswith("cuda"):
                raise TagLoomError("precision int8 runs on the CPU (ONNX Runtime's int8 kernels are CPU ones): "
                                   "use device cpu, or fp32/bf16 on the GPU")
            run_path = int8_model(self.path)
        device = "cpu" if self.precision == "int8" else options.device
        self.session, self.provider, self.device = onnx_session(run_path, device, options.threads, options.spinning)
        inp = self.session.get_inputs()[0]
        self.input_name, self.output_name = inp.name, self.session.get_outputs()[0].name
        shape = list(inp.shape)
        if len(shape) != 4:
            raise InputFileError(self.path, f"input {inp.name!r} has shape {shape}; an image tagger takes 4-D input")
        self.layout = self.model_family.layout
        channels = shape[3] if self.layout == NHWC else shape[1]
        if isinstance(channels, int) and channels != 3:
            raise InputFileError(self.path, f"input {inp.name!r} has shape {shape}, but a {self.family} model "
                                            f"takes {self.layout} input with 3 channels")
        self.input_size = self.model_family.input_side(shape)
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.output = self.model_family.outputs

    @property
    def output_count(self) -> int | None:
        shape = self.session.get_outputs()[0].shape
        return shape[-1] if shape and isinstance(shape[-1], int) else None

    def _finish(self, out: np.ndarray) -> np.ndarray:
        return sigmoid(out) if self.output == "logits" else out

    def _run_part(self, part: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_name: part})[0]
        return np.asarray(out, dtype=np.float32).reshape(len(part), -1)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(N, ...) float32 model input -> (N, L) float32 probabilities."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self._finish(run_in_parts(batch, self.fixed_batch, self._run_part))

    def run_tensor(self, x):
        import torch

        return torch.from_numpy(self.run(x.detach().float().cpu().numpy())).to(x.device)

    def predict(self, pixels) -> np.ndarray:
        """uint8 RGB squares (numpy NHWC, or a torch NCHW batch from the GPU decoder) -> probabilities."""
        if not isinstance(pixels, np.ndarray):
            if self.options.io_binding and self.model_family.raw_pixels and pixels.device.type == self.device:
                return self._predict_bound(pixels)
            pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()
        return self.run(self.model_family.to_input(pixels))

    def _predict_bound(self, pixels) -> np.ndarray:
        """Torch pixels into ONNX Runtime through IO binding, where they lie: from the GPU decoder
        no host round trip. The same code binds CPU tensors, which is how it is tested here."""
        return self._finish(run_in_parts(self.model_family.tensor_to_input(pixels), self.fixed_batch, self._run_bound))

    def _run_bound(self, part) -> np.ndarray:
        import torch

        part = part.contiguous()
        kind, index = part.device.type, part.device.index or 0
        if kind == "cuda":
            # ONNX Runtime reads the buffer on its own CUDA stream: the kernels torch queued to
            # fill it must have finished first, or the model would read half-written pixels.
            torch.cuda.current_stream(part.device).synchronize()
        binding = self.session.io_binding()
        binding.bind_input(self.input_name, kind, index, np.float32, list(part.shape), part.data_ptr())
        binding.bind_output(self.output_name, kind, index)
        self.session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32).reshape(len(part), -1)

    def close(self) -> None:
        self.session = None

    unload = close


# --- torch ------------------------------------------------------------------------------------------

def torch_device(device: str):
    import torch

    device = check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TagLoomError("device 'cuda' was asked for, but torch sees no CUDA GPU")
    return torch.device(device)


class TorchEngine:
    """A timm tagger folder (config.json + model.safetensors) in its family's input convention: the
    network's own mean/std (config.json) is applied here, as the wd-v3 ONNX graphs do inside."""

    name = "torch"
    precisions = names.PRECISIONS  # int8 is an ONNX path

    @classmethod
    def takes_device_pixels(cls, family) -> bool:
        return True

    def __init__(self, model_dir, family="wd", options: EngineOptions | None = None):
        import torch

        from tagloom.tagger.timm_model import input_size, load_model, mean_std, read_config

        options = options or EngineOptions()
        self.model_dir = Path(model_dir)
        self.model_family = get_family(family)
        self.family = self.model_family.name
        if self.name not in self.model_family.backends or not self.model_family.raw_pixels:
            raise TagLoomError(f"{self.model_dir}: {self.model_family.description} runs on the ONNX backend only")
        config = read_config(self.model_dir)
        mean, std = mean_std(config)
        self.input_size = input_size(config)
        self.layout = self.model_family.layout
        self.torch_device = torch_device(options.device)
        self.device = self.torch_device.type
        precision = check_precision(options.precision)
        if precision == "auto":
            precision = auto_precision(self.torch_device)
        self.precision = precision
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.autocast = options.autocast and precision != "fp32"
        compile = options.compile
        self.provider = (f"torch:{self.torch_device}" if options.autocast else f"torch:{self.torch_device}:{precision}") \
            + (":compiled" if compile else "")
        net = load_model(self.model_dir)
        net = net.to(self.torch_device, dtype=torch.float32 if options.autocast else self.dtype).eval()
        self.memory_format = torch.channels_last if self.device == "cuda" else torch.contiguous_format
        if self.device == "cuda":
            net = net.to(memory_format=torch.channels_last)
        self.num_classes = getattr(net, "num_classes", None)
        if compile:
            # max-autotune on CUDA: the mode behind ../shared/README.md's 508 img/s for EVA-02 Large
            # in bf16 (230 eager). Autotuning costs minutes once (inductor caches it on disk); on the
            # CPU it would only slow the build.
            net = torch.compile(net, mode="max-autotune-no-cudagraphs" if self.device == "cuda" else "default",
                                dynamic=False)
        self.net = net
        self.compiled = compile
        self.batch_size = options.batch_size
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.torch_device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.torch_device).view(1, 3, 1, 1)
        self._torch = torch
        if compile and self.batch_size and self.input_size:
            # Compile now, on the one padded shape every batch will have: otherwise the first batch
            # compiles (minutes with max-autotune), which a job would count as captioning time
            # ("model load 3 s, then N images/s") and bench/caption.py's warm-up job could not
            # absorb (each job builds a new engine, so it compiles again).
            s = self.input_size
            try:
                self.predict(torch.zeros((self.batch_size, 3, s, s), dtype=torch.uint8, device=self.torch_device))
            except Exception as e:  # no C++ compiler / Triton (Windows), an unsupported op, ...
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise TagLoomError(f"torch.compile failed for {self.model_dir.name} on {self.torch_device} "
                                   f"({type(e).__name__}: {first}); run without --compile") from e

    @property
    def module(self):
        """The network (the compiled one when compiled)."""
        return self.net

    @property
    def output_count(self) -> int | None:
        return int(self.num_classes) if isinstance(self.num_classes, int) else None

    def _parts(self, x, fn):
        # Compiled: one input shape, so a short batch is padded (a second shape would compile again).
        return run_in_parts(x, self.batch_size if self.compiled and self.batch_size else None, fn)

    def _forward(self, x):
        """float32 NCHW in the network's channel order, 0..255, on the device -> probabilities."""
        torch = self._torch
        with torch.inference_mode():
            x = (x / 255.0 - self.mean) / self.std
            if not self.autocast:
                x = x.to(self.dtype)
            # One memory layout whatever the source (a numpy NHWC batch arrives as a permuted view,
            # a padded or GPU-decoded batch as plain NCHW): torch.compile(dynamic=False) guards on
            # strides, and a second layout would compile the model a second time.
            x = x.contiguous(memory_format=self.memory_format)
            if self.autocast:
                with torch.autocast(device_type=self.torch_device.type, dtype=self.dtype):
                    out = self.net(x)
            else:
                out = self.net(x)
            return torch.sigmoid(out.float())

    def run_tensor(self, x):
        """A float batch of model input (the family's layout) on any device -> probabilities on
        this engine's device."""
        x = x.to(self.torch_device, dtype=self._torch.float32, non_blocking=True)
        if self.layout == NHWC:
            x = x.permute(0, 3, 1, 2)
        return self._parts(x, self._forward)

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = self._torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        return self.run_tensor(x).cpu().numpy()

    def predict(self, pixels) -> np.ndarray:
        """uint8 RGB squares (numpy NHWC, or a torch NCHW batch) -> (N, L) numpy probabilities."""
        torch = self._torch
        if isinstance(pixels, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(pixels))
            if self.device == "cuda":
                x = x.pin_memory().to(self.torch_device, non_blocking=True)
            x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW, still RGB uint8
        else:
            x = pixels.to(self.torch_device, non_blocking=True)
        bgr = self.model_family.channel_order == "BGR"

        def forward(part):
            return self._forward((part.flip(1) if bgr else part).to(torch.float32))

        return self._parts(x, forward).cpu().numpy()

    def close(self) -> None:
        self.net = None
        if self.device == "cuda":
            self._torch.cuda.empty_cache()

    unload = close


ENGINES = {engine.name: engine for engine in (OnnxEngine, TorchEngine)}


def engine_class(backend: str):
    try:
        return ENGINES[backend]
    except KeyError:
        raise TagLoomError(f"backend must be one of {', '.join(ENGINES)}, got {backend!r}") from None


def open_engine(model_dir, backend: str, family="wd", options: EngineOptions | None = None):
    """The engine for a model folder: ``backend`` onnx or torch (as resolved, not auto)."""
    return engine_class(backend)(model_dir, family, options)
