"""The LLM providers TagLoom knows, declared once.

The CLI's ``--provider`` choices, the nodes' provider combo, the tiers-file check and
``make_provider`` all read :data:`PROVIDERS`, so a name added here (an alias such as ``vllm``) is
reachable everywhere at once and a tiers file naming it is accepted.

Each entry says which wire protocol it speaks (``api``: the official ``ollama`` client or the
``openai`` client against any OpenAI-compatible server), where its server usually listens, the
model used when none is given (documented in docs/llm.md and the CLI help), how to start the server
and how to get a missing model, so error messages can name the exact command.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

from tagloom.llm.errors import LLMError

OPENAI_URL = "https://api.openai.com/v1"
# Hosts whose server is OpenAI's own: the only ones OPENAI_API_KEY is sent to by default.
OPENAI_HOSTS = {"api.openai.com"}


@dataclass(frozen=True)
class ProviderInfo:
    name: str
    api: str  # "ollama" or "openai" (the protocol and client)
    default_model: str
    default_base_url: str | None
    start_hint: str  # what to run when nothing listens at the URL
    pull_hint: str  # how to get a model the server lacks; {model} is filled in
    key_env: str | None = None  # key variable sent by default (only to this provider's own endpoint)
    note: str = ""


PROVIDERS: dict[str, ProviderInfo] = {
    p.name: p
    for p in (
        ProviderInfo("ollama", "ollama", "qwen2.5:7b-instruct", "http://127.0.0.1:11434",
                     "`ollama serve`", "`ollama pull {model}`", note="local Ollama >= 0.5"),
        ProviderInfo("openai", "openai", "gpt-4o-mini", OPENAI_URL,
                     "check the URL and your network", "pick a model the server lists at GET {base_url}/models",
                     key_env="OPENAI_API_KEY", note="OpenAI, or any OpenAI-compatible --base-url"),
        ProviderInfo("openai-compatible", "openai", "gpt-4o-mini", OPENAI_URL,
                     "start the server at that URL", "pick a model the server lists at GET {base_url}/models",
                     note="alias of openai"),
        ProviderInfo("llamacpp", "openai", "default", "http://127.0.0.1:8080/v1",
                     "`llama-server -m MODEL.gguf --port 8080`", "start llama-server with `-m {model}`",
                     note="llama.cpp's llama-server (serves the one model it loaded, whatever the name)"),
        ProviderInfo("lmstudio", "openai", "qwen2.5-7b-instruct", "http://127.0.0.1:1234/v1",
                     "`lms server start`", "`lms get {model}` and load it", note="LM Studio's local server"),
        ProviderInfo("vllm", "openai", "Qwen/Qwen2.5-7B-Instruct", "http://127.0.0.1:8000/v1",
                     "`vllm serve {model}`", "`vllm serve {model}`", note="vLLM's OpenAI-compatible server"),
    )
}

NAMES = list(PROVIDERS)  # ollama first: the default


def get(name: str | None) -> ProviderInfo:
    info = PROVIDERS.get((name or "ollama").lower())
    if info is None:
        raise LLMError(f"unknown provider {name!r}: use one of {', '.join(NAMES)}")
    return info


def is_openai_endpoint(base_url: str | None) -> bool:
    """True when ``base_url`` is OpenAI's own API (None means the openai client's default, OpenAI)."""
    if not base_url:
        return True
    host = (urlparse(base_url).hostname or "").lower()
    return host in OPENAI_HOSTS


def help_text() -> str:
    """One line per provider for --help: name, default model, default URL."""
    return "; ".join(f"{p.name}: model {p.default_model}, {p.default_base_url}" for p in PROVIDERS.values())
