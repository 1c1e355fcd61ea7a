"""One interface over Ollama and any OpenAI-compatible server, for structured JSON answers.

``provider.chat_json(system, user, schema)`` returns an :class:`LLMResult` with the parsed JSON
object, the token usage of that call and the output mode that worked. Both providers:

- ask for structured output first with the JSON schema itself (Ollama's ``format=<schema>``,
  OpenAI's ``response_format={"type": "json_schema", strict}``), fall back to plain JSON mode
  (``format="json"`` / ``json_object``), then to the prompt alone plus validation, for servers that
  reject a mode; the mode that worked is remembered for the provider's later calls;
- retry 429, 5xx, dropped connections, timeouts and unparseable output with exponential backoff
  under our own policy (the openai client's own retries are switched off, so a request is never
  retried by two layers and paid three times);
- take API keys only from the environment or the user config file (``tagloom.config.secret``),
  never from arguments that could come from a node widget or a workflow, and never print them:
  ``repr(provider)`` and every error message name the env variable, not the value.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from tagloom import config
from tagloom.errors import TagLoomError
from tagloom.llm.errors import LLMError, LLMOutputError  # noqa: F401 (defined there for the registry; importable from here)

log = logging.getLogger(__name__)

MODES = ("json_schema", "json_object", "prompt")


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0

    def add(self, other: "Usage") -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.requests += other.requests

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "requests": self.requests}


@dataclass
class LLMResult:
    data: dict
    usage: Usage
    mode: str
    model: str
    raw: str = ""


@dataclass
class RetryPolicy:
    """Exponential backoff with jitter: base * 2**attempt, capped; ``attempts`` tries in all."""

    attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 30.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, self.max_delay)
        d = min(self.base_delay * (2**attempt), self.max_delay)
        return d * (0.5 + random.random() / 2)


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Unsupported(Exception):
    """The server rejected the structured-output mode: fall back to the next one."""


def extract_json(text: str) -> dict:
    """The first JSON object in a model's text (prompt mode: models wrap it in prose or fences)."""
    text = (text or "").strip()
    try:
        value = json.loads(text)
        if isinstance(value, dict):
            return value
    except json.JSONDecodeError:
        pass
    start = text.find("{")
    while start != -1:
        depth = 0
        in_str = False
        esc = False
        for i in range(start, len(text)):
            ch = text[i]
            if in_str:
                if esc:
                    esc = False
                elif ch == "\\":
                    esc = True
                elif ch == '"':
                    in_str = False
            elif ch == '"':
                in_str = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    try:
                        value = json.loads(text[start : i + 1])
                        if isinstance(value, dict):
                            return value
                    except json.JSONDecodeError:
                        pass
                    break
        else:
            # the object never closes (a truncated answer): an inner object is not the answer
            break
        start = text.find("{", i + 1)
    raise LLMOutputError(f"the model's answer is not a JSON object: {text[:200]!r}")


def _schema_hint(schema: dict) -> str:
    return "Answer with one JSON object only, no prose, matching this JSON schema:\n" + json.dumps(schema, ensure_ascii=False)


class Provider:
    """Base class: subclasses implement ``_call(mode, messages, schema, max_tokens) -> (text, Usage)``."""

    kind = "base"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        temperature: float = 0.0,
        mode: str | None = None,
        info=None,
    ):
        from tagloom.llm import registry

        self.info = info or registry.get(self.kind)
        # No model named anywhere: the provider's documented default (docs/llm.md, registry.py).
        self.model = model or self.info.default_model
        self.base_url = base_url
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.temperature = temperature
        self._mode_index = MODES.index(mode) if mode else 0
        self._lock = threading.Lock()
        self.usage = Usage()

    def __repr__(self) -> str:  # never includes a key
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r})"

    @property
    def mode(self) -> str:
        return MODES[self._mode_index]

    def chat_json(self, system: str, user: str, schema: dict, max_tokens: int | None = None) -> LLMResult:
        """Ask for a JSON object matching ``schema``; retries and falls back as the module says."""
        attempt = 0
        last: Exception | None = None
        # Every attempt's tokens count, failed ones too (an unparseable answer was still paid for):
        # the result, or the error raised at the end, carries what this call spent in all.
        spent = Usage()
        while True:
            mode = self.mode
            # The schema hint goes after the batch, so the system prompt stays an identical prefix
            # (OpenAI's prompt caching, llama.cpp's and Ollama's KV cache reuse).
            user_text = user if mode == "json_schema" else user + "\n\n" + _schema_hint(schema)
            messages = [{"role": "system", "content": system}, {"role": "user", "content": user_text}]
            try:
                text, usage = self._call(mode, messages, schema, max_tokens)
                spent.add(usage)
                with self._lock:
                    self.usage.add(usage)
                try:
                    data = extract_json(text)
                except LLMOutputError as e:
                    raise _Retryable(str(e)) from None
                return LLMResult(data=data, usage=spent, mode=mode, model=self.model, raw=text)
            except _Unsupported as e:
                with self._lock:
                    if MODES[self._mode_index] != mode:
                        continue  # a concurrent request already moved the provider to a later mode
                    if self._mode_index < len(MODES) - 1:
                        self._mode_index += 1
                        log.info("%s: server rejected %s output (%s); falling back to %s", self, mode, e, self.mode)
                        continue
                raise _with_usage(LLMError(f"{self}: the server rejected every output mode: {e}"), spent) from None
            except _Retryable as e:
                last = e
                if attempt + 1 >= self.retry.attempts:
                    break
                d = self.retry.delay(attempt, e.retry_after)
                log.warning("%s: %s; retry %d/%d in %.1fs", self, e, attempt + 1, self.retry.attempts - 1, d)
                self.retry.sleep(d)
                attempt += 1
        if isinstance(last, _Retryable) and "not a JSON object" in str(last):
            raise _with_usage(LLMOutputError(f"{self}: {last}"), spent)
        raise _with_usage(LLMError(f"{self}: gave up after {self.retry.attempts} attempts: {last}"), spent)

    def _call(self, mode: str, messages: list[dict], schema: dict, max_tokens: int | None) -> tuple[str, Usage]:
        raise NotImplementedError

    def unload(self) -> None:
        """Free the model's memory on the server where the API allows it (Ollama: keep_alive 0)."""

    def _not_running(self) -> "LLMError":
        # A refused connection is not transient: retrying it only makes the user wait.
        return LLMError(f"{self}: nothing answers at {self.base_url or self.info.default_base_url}: "
                        f"is the server running? ({self.info.start_hint})")

    def _no_model(self, detail: str = "") -> "LLMError":
        hint = self.info.pull_hint.format(model=self.model, base_url=self.base_url or self.info.default_base_url)
        return LLMError(f"{self}: the server has no model {self.model!r}{': ' + detail if detail else ''} ({hint})")


class OpenAIProvider(Provider):
    """Any OpenAI-compatible server: OpenAI, LM Studio, vLLM, llama.cpp's server, Ollama's /v1."""

    kind = "openai"

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str | None = "OPENAI_API_KEY", **kw):
        super().__init__(model, base_url, **kw)
        self.api_key_env = api_key_env
        import openai

        key = config.secret(api_key_env) if api_key_env else None
        # Local servers need no key, but the client insists on one; this placeholder is not secret.
        self._client = openai.OpenAI(
            api_key=key or "no-key", base_url=base_url, timeout=self.timeout, max_retries=0
        )
        self._openai = openai

    def _call(self, mode, messages, schema, max_tokens):
        openai = self._openai
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": self.temperature}
        if max_tokens:
            kwargs["max_tokens"] = max_tokens
        if mode == "json_schema":
            from tagloom.llm.registry import is_openai_endpoint

            # Grammar-constrained servers (llama.cpp, vLLM) honour maxLength on free strings, which
            # keeps a small model from rambling past the token cap and cutting the JSON; OpenAI's
            # strict mode rejects maxLength, so its own endpoint gets the schema as it is.
            sent = schema if is_openai_endpoint(self.base_url) else bound_strings(schema)
            kwargs["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": sent}}
        elif mode == "json_object":
            # "schema" beside json_object is llama-cpp-python's way to constrain output to a schema
            # (its server has no json_schema type); other servers ignore it.
            # Free strings get a maxLength there: a grammar then cannot let a small model ramble
            # past the token cap and cut the JSON (OpenAI's strict json_schema mode rejects
            # maxLength, so it is only added here).
            kwargs["response_format"] = {"type": "json_object", "schema": bound_strings(schema)}
        try:
            resp = self._client.chat.completions.create(**kwargs)
        except openai.RateLimitError as e:
            raise _Retryable(f"rate limited (429)", _retry_after(e.response)) from None
        except openai.APITimeoutError:
            raise _Retryable(f"timed out after {self.timeout}s") from None
        except openai.APIConnectionError as e:
            if _refused(e.__cause__ or e):
                raise self._not_running() from None
            raise _Retryable(f"connection failed: {type(e.__cause__ or e).__name__}") from None
        except openai.NotFoundError as e:
            if "model" in _error_text(e).lower():
                raise self._no_model(_error_text(e)[:160]) from None
            raise LLMError(f"{self}: HTTP 404 at {self.base_url}: {_error_text(e)[:200]}") from None
        except openai.InternalServerError as e:
            # llama-cpp-python's server answers an unknown response_format type with a 500 whose
            # body names the field: that is a missing feature, not a transient failure
            if mode != "prompt" and "response_format" in _error_text(e):
                raise _Unsupported(_error_text(e)[:200]) from None
            raise _Retryable(f"server error {e.status_code}") from None
        except openai.AuthenticationError:
            raise LLMError(f"{self}: authentication failed: set the key in ${self.api_key_env} or config.toml [secrets]") from None
        except openai.BadRequestError as e:
            msg = _error_text(e)
            if mode != "prompt" and ("response_format" in msg or "json_schema" in msg or "schema" in msg.lower()):
                raise _Unsupported(msg[:200]) from None
            raise LLMError(f"{self}: request rejected: {msg[:300]}") from None
        except openai.UnprocessableEntityError as e:  # FastAPI-based servers validate the body: 422
            msg = _error_text(e)
            if mode != "prompt" and "response_format" in msg:
                raise _Unsupported(msg[:200]) from None
            raise LLMError(f"{self}: request rejected (422): {msg[:300]}") from None
        except openai.APIStatusError as e:
            if e.status_code >= 500 or e.status_code in (408, 409):
                raise _Retryable(f"server error {e.status_code}") from None
            raise LLMError(f"{self}: HTTP {e.status_code}: {str(e)[:300]}") from None
        except ValueError as e:  # a 200 whose body is not JSON (a broken proxy)
            raise _Retryable(f"unreadable response: {e}") from None
        if not getattr(resp, "choices", None):
            raise _Retryable("response has no choices")
        text = resp.choices[0].message.content or ""
        u = resp.usage
        usage = Usage(getattr(u, "prompt_tokens", 0) or 0, getattr(u, "completion_tokens", 0) or 0, 1)
        return text, usage


class OllamaProvider(Provider):
    """Ollama through its official client: /api/chat with a JSON-schema ``format``, num_ctx, keep_alive."""

    kind = "ollama"

    def __init__(self, model: str, base_url: str | None = None, num_ctx: int = 8192, keep_alive: str | float | None = "10m", **kw):
        super().__init__(model, base_url or "http://127.0.0.1:11434", **kw)
        import ollama

        self.num_ctx = num_ctx
        self.keep_alive = keep_alive
        self._ollama = ollama
        self._client = ollama.Client(host=self.base_url, timeout=self.timeout)

    def _call(self, mode, messages, schema, max_tokens):
        import httpx

        ollama = self._ollama
        fmt: Any = schema if mode == "json_schema" else ("json" if mode == "json_object" else None)
        # num_ctx: Ollama's default context silently truncates long batches.
        options: dict[str, Any] = {"temperature": self.temperature, "num_ctx": self.num_ctx}
        if max_tokens:
            options["num_predict"] = max_tokens
        try:
            resp = self._client.chat(model=self.model, messages=messages, format=fmt, options=options, keep_alive=self.keep_alive)
        except ollama.ResponseError as e:
            code = e.status_code
            if code == 429 or code >= 500:
                raise _Retryable(f"server error {code}: {str(e.error)[:120]}") from None
            if code == 400 and mode != "prompt" and "format" in str(e.error).lower():
                raise _Unsupported(str(e.error)[:200]) from None
            if code == 404:
                raise self._no_model() from None
            raise LLMError(f"{self}: HTTP {code}: {str(e.error)[:300]}") from None
        except ConnectionError as e:
            if _refused(e.__cause__ or e) or "Failed to connect" in str(e):
                raise self._not_running() from None
            raise _Retryable(f"cannot connect to {self.base_url}") from None
        except httpx.TimeoutException:
            raise _Retryable(f"timed out after {self.timeout}s") from None
        except (httpx.TransportError, json.JSONDecodeError) as e:
            raise _Retryable(f"connection failed: {type(e).__name__}") from None
        except ValueError as e:  # pydantic validation of a broken body
            raise _Retryable(f"unreadable response: {str(e)[:120]}") from None
        text = resp.message.content or ""
        usage = Usage(resp.prompt_eval_count or 0, resp.eval_count or 0, 1)
        return text, usage

    def unload(self) -> None:
        # keep_alive=0 unloads the model; done once at the end of a job, not per batch.
        try:
            self._client.generate(model=self.model, prompt="", keep_alive=0)
        except Exception as e:  # unloading is best effort
            log.info("%s: unload failed: %s", self, e)


def _with_usage(error: LLMError, usage: Usage) -> LLMError:
    error.usage = usage  # what the failed call still cost (tokens of answers that did not parse)
    return error


# Characters a grammar-constrained server lets a free string (a reason) take; see bound_strings.
FREE_STRING_MAX = 80


def bound_strings(schema, max_length: int = FREE_STRING_MAX):
    """A copy of ``schema`` where every free string (no enum, no maxLength) has ``maxLength``."""
    if isinstance(schema, dict):
        out = {k: bound_strings(v, max_length) for k, v in schema.items()}
        if out.get("type") == "string" and "enum" not in out and "maxLength" not in out:
            out["maxLength"] = max_length
        return out
    if isinstance(schema, list):
        return [bound_strings(v, max_length) for v in schema]
    return schema


def _error_text(e) -> str:
    """The message and the body of an HTTP error (FastAPI puts the field name in ``detail``)."""
    body = getattr(e, "body", None)
    try:
        extra = json.dumps(body, ensure_ascii=False) if body is not None else ""
    except (TypeError, ValueError):
        extra = str(body)
    return f"{getattr(e, 'message', '') or e} {extra}".strip()


def _retry_after(response) -> float | None:
    try:
        value = response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, ValueError):
        return None


def _refused(err: BaseException | None) -> bool:
    """Nothing listens at the address (connection refused, or no such host): not worth retrying.
    A connection dropped mid-answer or a timeout is retried instead."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, (ConnectionRefusedError,)):
            return True
        name = type(err).__name__
        if name == "ConnectError":  # httpx: the TCP connection could not be made at all
            return True
        err = err.__cause__ or err.__context__
        seen += 1
    return False


def make_provider(
    kind: str,
    model: str | None,
    base_url: str | None = None,
    api_key_env: str | None = None,
    timeout: float = 120.0,
    retry: RetryPolicy | None = None,
    **kw,
) -> Provider:
    """``kind``: a name from :data:`tagloom.llm.registry.PROVIDERS` (``ollama``, ``openai`` and the
    OpenAI-compatible aliases). An empty model is the provider's documented default. The OpenAI key
    variable goes only to OpenAI's own endpoint; another server gets the variable that
    ``api_key_env`` names, or no key."""
    from tagloom.llm import registry

    info = registry.get(kind)
    if info.api == "ollama":
        return OllamaProvider(model, base_url or info.default_base_url, timeout=timeout, retry=retry, info=info, **kw)
    kw.pop("num_ctx", None)
    kw.pop("keep_alive", None)
    base_url = base_url or info.default_base_url
    if not api_key_env and info.key_env and registry.is_openai_endpoint(base_url):
        api_key_env = info.key_env
    return OpenAIProvider(model, base_url, api_key_env=api_key_env, timeout=timeout, retry=retry, info=info, **kw)
