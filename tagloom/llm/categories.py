"""The pack's tag categories, their sub-categories, and the keyed batch schema the LLM answers.

docs/llm.md documents the same table; ``PROMPT_VERSION`` changes whenever the categories or the
prompt change, and is stored with every answer so results from different prompts can be told apart.
"""

from __future__ import annotations

CATEGORIES: dict[str, dict] = {
    "CHARACTER_RELATED": {
        "doc": "who is in the picture and how they look",
        "subs": ["body", "face", "hair", "eyes", "clothing", "accessories", "expression", "species_traits", "count"],
    },
    "ACTION_POSE": {
        "doc": "what characters do and how they stand, sit or move",
        "subs": ["pose", "gesture", "action", "interaction", "gaze"],
    },
    "OBJECTS": {
        "doc": "things: props, weapons, food, vehicles, animals that are not the subject",
        "subs": ["weapon", "food_drink", "vehicle", "furniture", "tool_device", "animal", "plant", "other_object"],
    },
    "ENVIRONMENT": {
        "doc": "where: places, buildings, landscapes, weather, time of day",
        "subs": ["indoor", "outdoor", "architecture", "nature", "weather", "time_of_day", "season"],
    },
    "COMPOSITION": {
        "doc": "framing, camera angle, view, layout of the image",
        "subs": ["framing", "angle", "perspective", "layout", "background"],
    },
    "VISUAL_EFFECTS": {
        "doc": "light, color, particles and rendering effects",
        "subs": ["lighting", "color", "particles", "blur_focus", "effect"],
    },
    "ART_STYLE": {
        "doc": "medium and style: sketch, watercolor, pixel art, era styles",
        "subs": ["medium", "style", "artist_style", "era"],
    },
    "ADULT_CONTENT": {
        "doc": "nudity, sexual content, fetishes",
        "subs": ["nudity", "sexual_act", "fetish", "suggestive"],
    },
    "THEME_CONCEPT": {
        "doc": "themes, moods, events, cultural concepts",
        "subs": ["mood", "event", "genre", "culture", "symbol"],
    },
    "TECHNICAL": {
        "doc": "metadata about the file or the post: resolution, text, watermarks, formats",
        "subs": ["quality", "text_signature", "format", "meta"],
    },
}

MAIN_CATEGORIES: list[str] = list(CATEGORIES)
ALL_SUBS: list[str] = sorted({s for c in CATEGORIES.values() for s in c["subs"]})

PROMPT_VERSION = "cat-v1"

SYSTEM_PROMPT = (
    "You categorize Danbooru image tags for artists who browse them. For every tag you are given, "
    "answer with its main category, a sub-category of that main category (or null), your confidence "
    "between 0 and 1 and a reason of a few words. Answer every tag, exactly as written, once.\n"
    "Main categories and their sub-categories:\n"
    + "\n".join(f"- {name}: {c['doc']}. Sub-categories: {', '.join(c['subs'])}" for name, c in CATEGORIES.items())
)


def item_schema() -> dict:
    """One tag's answer. Strict-schema rules: every field required, no extra fields."""
    return {
        "type": "object",
        "properties": {
            "main_category": {"type": "string", "enum": MAIN_CATEGORIES},
            "sub_category": {"anyOf": [{"type": "string", "enum": ALL_SUBS}, {"type": "null"}]},
            "confidence": {"type": "number"},
            "reason": {"type": "string"},
        },
        "required": ["main_category", "sub_category", "confidence", "reason"],
        "additionalProperties": False,
    }


def keyed_schema(tags: list[str], item: dict) -> dict:
    """An object keyed by tag, every tag required: a small model cannot skip or repeat a tag, which an
    array of ``{tag, ...}`` objects allowed (measured: 12 unique of 20; keyed: 20 of 20)."""
    # The item schema is defined once and referenced per tag: inline it costs ~150 tokens per tag
    # where the schema travels in the prompt; a $ref costs ~8 (OpenAI strict, Ollama and llama.cpp
    # grammars all resolve local $defs).
    return {
        "type": "object",
        "properties": {t: {"$ref": "#/$defs/item"} for t in tags},
        "required": list(tags),
        "additionalProperties": False,
        "$defs": {"item": item},
    }


def validate_item(tag: str, value) -> dict | None:
    """A validated ``{tag, main_category, sub_category, confidence, reason}``, or None when out of
    schema (unknown main category, no confidence). A sub-category that does not belong to the main
    one is dropped to null rather than failing the tag: the main category is what browsing needs."""
    if not isinstance(value, dict):
        return None
    main = value.get("main_category")
    if isinstance(main, str):
        main = main.strip().upper().replace(" ", "_")
    if main not in CATEGORIES:
        return None
    sub = value.get("sub_category")
    if isinstance(sub, str):
        sub = sub.strip().lower().replace(" ", "_")
    if sub not in CATEGORIES[main]["subs"]:
        sub = None
    conf = value.get("confidence")
    if isinstance(conf, bool) or not isinstance(conf, (int, float)):
        return None
    conf = float(min(max(conf, 0.0), 1.0))
    reason = value.get("reason")
    reason = str(reason).strip()[:200] if reason is not None else ""
    return {"tag": tag, "main_category": main, "sub_category": sub, "confidence": conf, "reason": reason}
