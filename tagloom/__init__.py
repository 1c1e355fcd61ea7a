"""TagLoom core library: tagging, tag knowledge, LLM tools and training helpers.

Plain Python that imports without ComfyUI or the WebUI. Heavy dependencies (torch, onnxruntime,
chromadb, ...) are imported lazily inside the functions that need them, so `import tagloom` is cheap.
"""

__version__ = "0.1.0"
