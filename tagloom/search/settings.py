"""Search settings: their defaults and documentation live in tagloom.config.DEFAULTS
(docs/configuration.md); read through tagloom.config (environment ``TAGLOOM_<NAME>`` or config.toml).
"""

from __future__ import annotations

from tagloom import config

DEFAULTS = {name: config.DEFAULTS[name][0] for name in ("search_embedder", "search_semantic", "search_device", "search_model_wait", "search_semantic_threshold", "search_store", "chroma_host", "chroma_port")}


def get(name: str):
    value = config.setting(name)
    if value is None or value == "":
        return DEFAULTS.get(name)
    return value
