"""Tiered routing: which provider answers which tags, by post count, configured in one file.

A tiers file is TOML (or JSON with the same shape)::

    [[tier]]
    name = "popular"          # tags with >= 10000 posts go to a strong paid model
    min_posts = 10000
    provider = "openai"
    model = "gpt-4o-mini"
    api_key_env = "OPENAI_API_KEY"   # the NAME of the variable; the key itself never goes here
    price_in = 0.15           # USD per million prompt tokens (for --dry-run estimates)
    price_out = 0.60
    batch_size = 50
    concurrency = 4

    [[tier]]
    name = "rest"
    min_posts = 0
    provider = "ollama"
    model = "qwen2.5:7b-instruct"
    base_url = "http://127.0.0.1:11434"

A tag goes to the first tier (highest ``min_posts`` first) whose ``min_posts`` it reaches.
"""

from __future__ import annotations

import json
import math
from tagloom.tomlcompat import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from tagloom.errors import InputFileError

from tagloom.llm.registry import NAMES as _PROVIDER_NAMES

KNOWN_PROVIDERS = set(_PROVIDER_NAMES)  # declared once in tagloom/llm/registry.py


@dataclass
class Tier:
    name: str
    provider: str
    model: str
    min_posts: int = 0
    base_url: str | None = None
    api_key_env: str | None = None
    price_in: float = 0.0
    price_out: float = 0.0
    batch_size: int = 50
    concurrency: int = 1
    num_ctx: int = 8192
    timeout: float = 120.0

    def provider_label(self) -> str:
        return f"{self.provider}:{self.model}"


def load_tiers(path: str | Path) -> list[Tier]:
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "tiers file not found")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
        else:
            with path.open("rb") as f:
                data = tomllib.load(f)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputFileError(path, f"not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'}: {e}") from e
    raw = data.get("tier") or data.get("tiers") if isinstance(data, dict) else None
    if not isinstance(raw, list) or not raw:
        raise InputFileError(path, "no tiers: expected one or more [[tier]] tables")
    allowed = {f.name for f in fields(Tier)}
    tiers = []
    for i, t in enumerate(raw):
        if not isinstance(t, dict):
            raise InputFileError(path, f"tier {i + 1} is not a table")
        unknown = set(t) - allowed
        if unknown:
            if {"api_key", "key", "token"} & unknown:
                raise InputFileError(path, "tier %d holds a key: put it in an environment variable and name it in api_key_env" % (i + 1))
            raise InputFileError(path, f"tier {i + 1}: unknown field(s) {sorted(unknown)}")
        for req in ("provider",):
            if not t.get(req):
                raise InputFileError(path, f"tier {i + 1}: '{req}' is required")
        if t["provider"] not in KNOWN_PROVIDERS:
            raise InputFileError(path, f"tier {i + 1}: provider must be one of {', '.join(_PROVIDER_NAMES)}, not {t['provider']!r}")
        t = dict(t)
        if not t.get("model"):  # the provider's documented default model
            from tagloom.llm.registry import get

            t["model"] = get(t["provider"]).default_model
        t.setdefault("name", f"tier{i + 1}")
        try:
            tiers.append(Tier(**t))
        except TypeError as e:
            raise InputFileError(path, f"tier {i + 1}: {e}") from e
    return sorted(tiers, key=lambda t: -t.min_posts)


def split_by_tier(tiers: list[Tier], tags_with_posts: list[tuple[str, int]]) -> dict[str, list[str]]:
    """{tier name: tags}; tiers sorted by min_posts descending, a tag goes to the first it reaches."""
    out: dict[str, list[str]] = {t.name: [] for t in tiers}
    for name, posts in tags_with_posts:
        for t in tiers:
            if (posts or 0) >= t.min_posts:
                out[t.name].append(name)
                break
    return out


def estimate_tokens(text: str) -> int:
    """~4 characters per token for English prompts; good enough for a budget, not a bill."""
    return max(1, math.ceil(len(text) / 4))


def estimate(task, tags: list[str], batch_size: int) -> dict:
    """Estimated requests and tokens for asking ``task`` about ``tags`` in batches of ``batch_size``."""
    from tagloom.llm.categories import keyed_schema

    if not tags:
        return {"tags": 0, "requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    requests = math.ceil(len(tags) / batch_size)
    system = estimate_tokens(task.system)
    per_tag_in = sum(estimate_tokens(t) + 1 for t in tags)
    # structured output: the schema (item defined once, one $ref per tag) goes with every request;
    # counted as prompt tokens, which is exact in prompt mode and an upper bound otherwise
    schema_fixed = estimate_tokens(json.dumps(keyed_schema([], task.item_schema())))
    per_tag_schema = estimate_tokens(json.dumps({"x": {"$ref": "#/$defs/item"}})) + 1
    prompt = requests * (system + 10 + schema_fixed) + per_tag_in * 2 + len(tags) * per_tag_schema
    completion = len(tags) * (task.out_tokens_per_tag + 2)
    return {"tags": len(tags), "requests": requests, "prompt_tokens": prompt, "completion_tokens": completion}


def cost(tokens: dict, tier: Tier) -> float:
    return tokens["prompt_tokens"] * tier.price_in / 1e6 + tokens["completion_tokens"] * tier.price_out / 1e6
