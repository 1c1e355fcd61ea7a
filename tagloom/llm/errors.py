"""The LLM errors, apart from the providers so that the provider registry can raise them without
importing the providers (which read the registry): no import circle."""

from __future__ import annotations

from tagloom.errors import TagLoomError


class LLMError(TagLoomError):
    """The server could not be reached or kept failing after our retries. ``usage``: the tokens the
    failed call still spent (answers that came back but did not parse)."""

    usage: "Usage | None" = None  # noqa: F821 - tagloom.llm.providers.Usage


class LLMOutputError(LLMError):
    """The model's answer was not the JSON object we asked for."""
