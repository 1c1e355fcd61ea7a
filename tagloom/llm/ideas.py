"""Idea -> tags: free text in any language to a prompt of real Danbooru tags.

1. The user's weighted parts ``(red hair:1.2)`` are taken out first and kept with their weights.
2. The LLM is asked for Danbooru tags for the idea (structured output: ``{"tags": [...]}``).
3. Every tag is snapped to a real tag of the tag database: the name or an alias as is, else the
   nearest real tag from the search index (``tagloom.search.suggest``: typo-tolerant and, when an
   index is built, semantic), else it is dropped. Each replacement and drop is reported.
4. Tags are ordered the way prompts are usually written: count (1girl, solo), character, series,
   artist, then the pack's categories (appearance, pose, objects, place, composition, effects,
   style, concepts), quality/meta last; within a group the model's order (importance) is kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from tagloom.llm.providers import Provider
from tagloom.tags.db import TagDB, canonical

IDEA_PROMPT_VERSION = "idea-v1"
IDEA_SYSTEM = (
    "You turn a picture idea, written in any language, into Danbooru tags for an anime image model. "
    "Answer with English Danbooru tags only: lower case, words joined by underscores (long_hair, "
    "cherry_blossoms, from_above), most important first, 8 to 30 tags, no sentences, no duplicates. "
    "Include the subject count (1girl, 2boys, solo) when people appear."
)

WEIGHTED = re.compile(r"\(\s*([^():]+?)\s*:\s*([0-9]*\.?[0-9]+)\s*\)")
COUNT = re.compile(r"^(\d+\+?(girl|boy|other)s?|solo|solo_focus|multiple_(girls|boys|others)|no_humans)$")

ORDER = [
    "COUNT", "character", "copyright", "artist",
    "CHARACTER_RELATED", "ACTION_POSE", "OBJECTS", "ENVIRONMENT", "COMPOSITION", "VISUAL_EFFECTS",
    "ART_STYLE", "THEME_CONCEPT", None, "ADULT_CONTENT", "TECHNICAL", "meta",
]


def idea_schema() -> dict:
    return {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["tags"],
        "additionalProperties": False,
    }


def split_weights(text: str) -> tuple[str, list[tuple[str, float]]]:
    """``"a girl, (red hair:1.2)"`` -> (``"a girl, red hair"``, [("red hair", 1.2)])."""
    weighted = [(m.group(1).strip(), float(m.group(2))) for m in WEIGHTED.finditer(text)]
    plain = WEIGHTED.sub(lambda m: m.group(1), text)
    return plain, weighted


@dataclass
class Snap:
    original: str
    tag: str | None
    how: str  # exact, alias, nearest, dropped


class TagSnapper:
    """Maps a term to a real tag: exact name, alias, or the nearest through ``suggest``."""

    def __init__(self, db: TagDB, suggest: Callable[[str], list[dict]] | None = None):
        self.db = db
        self.suggest = suggest if suggest is not None else self._default_suggest()

    def _default_suggest(self):
        try:
            from tagloom.search import suggest
        except ImportError:
            return None
        path = self.db.path

        def run(term: str) -> list[dict]:
            return suggest(term, limit=5, db_path=path)

        return run

    def snap(self, term: str) -> Snap:
        key = canonical(term.replace("\\(", "(").replace("\\)", ")"))
        if not key:
            return Snap(term, None, "dropped")
        row = self.db.get(key)
        if row is not None:
            return Snap(term, row["name"], "exact" if row["name"] == key else "alias")
        if self.suggest is not None:
            try:
                hits = self.suggest(key.replace("_", " "))
            except Exception:  # a broken index must not lose the whole prompt
                hits = []
            for h in hits:
                # a bare prefix hit ("temple" -> "temple_of_doom") is a different tag, not a correction
                if h.get("reason") in ("exact", "alias", "fuzzy", "semantic"):
                    return Snap(term, h["tag"], "nearest")
        return Snap(term, None, "dropped")


@dataclass
class IdeaResult:
    prompt: str
    tags: list[dict] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    replaced: list[tuple[str, str]] = field(default_factory=list)
    usage: dict = field(default_factory=dict)

    def report(self) -> str:
        lines = [f"{len(self.tags)} tags"]
        if self.replaced:
            lines.append("replaced: " + ", ".join(f"{a} -> {b}" for a, b in self.replaced))
        if self.dropped:
            lines.append("dropped (no such tag): " + ", ".join(self.dropped))
        return "\n".join(lines)


def _group(row: dict | None, tag: str) -> int:
    if COUNT.match(tag):
        return ORDER.index("COUNT")
    if row is None:
        return ORDER.index(None)
    cat = {1: "artist", 3: "copyright", 4: "character", 5: "meta"}.get(row.get("category"))
    if cat:
        return ORDER.index(cat)
    main = row.get("main_category")
    return ORDER.index(main) if main in ORDER else ORDER.index(None)


def format_tag(tag: str, weight: float | None = None, underscores: bool = False) -> str:
    # short kaomoji tags (^_^, >_<) keep their underscores: they are part of the face
    text = tag if underscores or len(tag) <= 3 else tag.replace("_", " ")
    text = text.replace("(", "\\(").replace(")", "\\)")
    return f"({text}:{weight:g})" if weight is not None and weight != 1.0 else text


def order_and_format(db: TagDB, entries: list[dict], underscores: bool = False) -> tuple[list[dict], str]:
    rows = {e["tag"]: db.get(e["tag"]) for e in entries}
    ordered = sorted(enumerate(entries), key=lambda ie: (_group(rows[ie[1]["tag"]], ie[1]["tag"]), ie[0]))
    out = []
    for _, e in ordered:
        row = rows[e["tag"]] or {}
        out.append(dict(e, main_category=row.get("main_category")))
    prompt = ", ".join(format_tag(e["tag"], e.get("weight"), underscores) for e in out)
    return out, prompt


def idea_to_tags(
    idea: str,
    provider: Provider | None,
    db: TagDB,
    snapper: TagSnapper | None = None,
    max_tags: int = 30,
    underscores: bool = False,
) -> IdeaResult:
    """See the module docstring. ``provider`` None: only the user's own tags/weights are snapped."""
    snapper = snapper or TagSnapper(db)
    plain, weighted = split_weights(idea)
    terms: list[tuple[str, float | None, str]] = [(t, w, "user") for t, w in weighted]
    usage = {}
    if provider is not None and plain.strip():
        res = provider.chat_json(IDEA_SYSTEM, "Idea: " + plain.strip(), idea_schema(), max_tokens=20 * max_tags + 50)
        tags = res.data.get("tags") if isinstance(res.data, dict) else None
        if isinstance(tags, list):
            terms += [(str(t), None, "llm") for t in tags if isinstance(t, (str, int))][:max_tags]
        usage = res.usage.as_dict()
    result = IdeaResult(prompt="", usage=usage)
    seen: dict[str, dict] = {}
    for term, weight, source in terms:
        s = snapper.snap(term)
        if s.tag is None:
            result.dropped.append(term)
            continue
        if s.how == "nearest" or (s.how == "alias" and canonical(term) != s.tag):
            result.replaced.append((term, s.tag))
        if s.tag in seen:
            if weight is not None and seen[s.tag].get("weight") is None:
                seen[s.tag]["weight"] = weight  # the user's weight wins over the model's bare tag
            continue
        seen[s.tag] = {"tag": s.tag, "weight": weight, "source": source, "original": term, "snapped": s.how}
    result.tags, result.prompt = order_and_format(db, list(seen.values()), underscores)
    return result
