"""TagLoomTagSearch: ideas in plain words -> Danbooru tags, for workflows built from ideas.

Thin wrapper over ``tagloom.search.suggest``; the query is split on commas and new lines and each
idea contributes its best tags ("two ponytails, fox ears, sunset" -> "twintails, fox ears, sunset").
"""

from __future__ import annotations

from tagloom import names


class TagLoomTagSearch:
    CATEGORY = "TagLoom/Tags"
    FUNCTION = "search"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("tags",)
    DESCRIPTION = (
        "Find Danbooru tags for ideas written in plain words (one idea per comma or line). Uses the "
        "TagLoom tag database; semantic matching needs `tagloom index build`."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "query": ("STRING", {"multiline": True, "default": "two ponytails, fox ears, sunset",
                                     "tooltip": "Ideas separated by commas or new lines."}),
                "tags_per_idea": ("INT", {"default": 1, "min": 1, "max": 20,
                                          "tooltip": "How many of the best tags each idea adds."}),
                "semantic": (list(names.SEMANTIC_MODES), {"default": "auto",
                                                    "tooltip": "auto: use the semantic index when one is built."}),
                "replace_underscores": ("BOOLEAN", {"default": True}),
                "escape_parentheses": ("BOOLEAN", {"default": True}),
                "keep_unmatched": ("BOOLEAN", {"default": True,
                                               "tooltip": "An idea that matches no tag goes into the prompt as written."}),
            },
        }

    def search(self, query, tags_per_idea=1, semantic="auto", replace_underscores=True, escape_parentheses=True,
               keep_unmatched=True):
        mode = {"auto": None, "on": True, "off": False}[semantic]
        parts = []
        for tag, matched in tags_for_ideas(query, per_idea=int(tags_per_idea), semantic=mode):
            if matched:
                parts.append(format_tag(tag, replace_underscores, escape_parentheses))
            elif keep_unmatched:
                parts.append(tag)  # the user's own words, as they wrote them
        return (", ".join(parts),)


def split_ideas(query: str) -> list[str]:
    """Comma/newline separated ideas; prompt weights ``(idea:1.2)`` and brackets are dropped."""
    import re

    out = []
    for part in re.split(r"[,\n]+", query or ""):
        part = re.sub(r":[-+\d.\s]*$", "", part.strip().strip("()[]{}").strip()).strip("()[]{} ")
        if part:
            out.append(part)
    return out


def tags_for_ideas(query: str, per_idea: int = 1, semantic: bool | None = None) -> list[tuple[str, bool]]:
    """(tag, True) for the best ``per_idea`` tags of each idea, (idea, False) for an idea that
    matched nothing; in the order of the ideas, without repeats."""
    from tagloom.search import suggest

    seen: dict[str, bool] = {}
    for idea in split_ideas(query):
        hits = suggest(idea, limit=max(per_idea, 1), semantic=semantic)[:per_idea]
        for hit in hits:
            seen.setdefault(hit["tag"], True)
        if not hits:
            seen.setdefault(idea, False)
    return list(seen.items())


def format_tag(tag: str, replace_underscores: bool = True, escape_parentheses: bool = True) -> str:
    """The same formatting as the autocomplete popup (web/lib/tagloom-autocomplete-core.js formatTag)."""
    if replace_underscores and len(tag) > 3:  # ^_^ and o_o keep their underscore
        tag = tag.replace("_", " ")
    if escape_parentheses:
        tag = tag.replace("(", "\\(").replace(")", "\\)")
    return tag


NODE_CLASS_MAPPINGS = {"TagLoomTagSearch": TagLoomTagSearch}
NODE_DISPLAY_NAME_MAPPINGS = {"TagLoomTagSearch": "TagLoom Tag Search (ideas → tags)"}
