"""The two inference backends behind one small interface.

Both take a batch in the model family's input convention (what ``tagloom.tagger.preprocess`` makes:
wd-v3 NHWC BGR 0..255, JoyTag NCHW RGB CLIP-normalised) and return sigmoid probabilities (N, L)
float32 as numpy. The torch backend also runs torch tensors already on its device (``run_tensor``)
for GPU pipelines.

ONNX Runtime: CUDA provider when asked for (or on ``auto``) and the installed onnxruntime has one,
else CPU. onnxruntime-gpu lists CUDA even on machines without a GPU and then silently falls back, so
``provider``/``device`` report what the session really uses (read back from the session).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tagloom import names
from tagloom.errors import InputFileError, TagLoomError

DEVICES = names.DEVICES


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logits -> float32 probabilities (computed in float64 so large logits do not overflow)."""
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


def check_device(device: str) -> str:
    device = (device or "auto").lower()
    if device not in DEVICES and not device.startswith("cuda:"):
        raise TagLoomError(f"device must be auto, cpu or cuda, got {device!r}")
    return device


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


class OnnxBackend:
    name = "onnx"

    def __init__(self, onnx_path, device: str = "auto", output: str = "probs"):
        """``output``: 'probs' when the graph ends in a sigmoid (wd-v3, ours), 'logits' (JoyTag)."""
        import onnxruntime as ort

        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise InputFileError(self.path, "missing: no ONNX weights (model.onnx) in the model folder")
        self.session, self.provider, self.device = onnx_session(self.path, device)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.output_name = self.session.get_outputs()[0].name
        shape = list(inp.shape)
        if len(shape) != 4:
            raise InputFileError(self.path, f"input {inp.name!r} has shape {shape}; an image tagger takes 4-D input")
        self.layout = "NHWC" if shape[-1] == 3 else "NCHW"
        side = shape[1] if self.layout == "NHWC" else shape[-1]
        self.input_size = side if isinstance(side, int) else None
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.output = output

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.fixed_batch and batch.shape[0] != self.fixed_batch:
            # Some exported taggers have their batch size baked in (usually 1): run them in parts of
            # that size, the last one padded with blank images whose rows are dropped (a short part
            # would be refused by ONNX Runtime, and recursed on forever here).
            step, n, parts = self.fixed_batch, batch.shape[0], []
            for i in range(0, n, step):
                part = batch[i : i + step]
                if len(part) < step:
                    part = np.concatenate([part, np.zeros((step - len(part), *part.shape[1:]), part.dtype)])
                parts.append(self.run(part)[: min(step, n - i)])
            return np.concatenate(parts, axis=0) if parts else np.zeros((0, 0), np.float32)
        out = self.session.run([self.output_name], {self.input_name: batch})[0]
        out = np.asarray(out, dtype=np.float32).reshape(batch.shape[0], -1)
        return sigmoid(out) if self.output == "logits" else out

    def run_tensor(self, x):
        import torch

        return torch.from_numpy(self.run(x.detach().float().cpu().numpy())).to(x.device)

    def unload(self) -> None:
        self.session = None


def torch_device(device: str):
    import torch

    device = check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TagLoomError("device 'cuda' was asked for, but torch sees no CUDA GPU")
    return torch.device(device)


class TorchBackend:
    """A timm wd-style model (config.json + model.safetensors) wrapped to the wd I/O convention."""

    name = "torch"

    def __init__(self, model_dir, device: str = "auto", precision: str = "fp32"):
        import torch

        from tagloom.tagger.export import wd_wrapper
        from tagloom.tagger.timm_model import input_size, load_model, mean_std, read_config

        self.model_dir = Path(model_dir)
        config = read_config(self.model_dir)
        mean, std = mean_std(config)
        self.input_size = input_size(config)
        self.layout = "NHWC"
        self.torch_device = torch_device(device)
        self.device = self.torch_device.type
        self.provider = f"torch:{self.torch_device}"
        if precision not in names.PRECISIONS[1:]:
            raise TagLoomError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
        self.precision = precision
        self.module = wd_wrapper(load_model(self.model_dir), mean, std).to(self.torch_device)
        self._torch = torch

    def run_tensor(self, x):
        """A float batch on any device (NHWC BGR 0..255) -> probabilities on this backend's device."""
        torch = self._torch
        x = x.to(self.torch_device, dtype=torch.float32, non_blocking=True)
        with torch.inference_mode():
            if self.precision == "fp32":
                return self.module(x).float()
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            with torch.autocast(device_type=self.torch_device.type, dtype=dtype):
                return self.module(x).float()

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = self._torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        return self.run_tensor(x).cpu().numpy()

    def unload(self) -> None:
        self.module = None
        if self.device == "cuda":
            self._torch.cuda.empty_cache()
