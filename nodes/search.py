"""TagLoomTagSearch: ideas in plain words -> Danbooru tags, for workflows built from ideas.

Thin wrapper over ``tagloom.search.suggest``; the query is split on commas and new lines and each
idea contributes its best tags ("two ponytails, fox ears, sunset" -> "twintails, fox ears, sunset").
"""

from __future__ import annotations


class TagLoomTagSearch:
    CATEGORY = "TagLoom/tags"
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
                "semantic": (["auto", "on", "off"], {"default": "auto",
                                                    "tooltip": "auto: use the semantic index when one is built."}),
                "replace_underscores": ("BOOLEAN", {"default": True}),
                "escape_parentheses": ("BOOLEAN", {"default": True}),
            },
        }

    def search(self, query, tags_per_idea=1, semantic="auto", replace_underscores=True, escape_parentheses=True):
        mode = {"auto": None, "on": True, "off": False}[semantic]
        tags = tags_for_ideas(query, per_idea=int(tags_per_idea), semantic=mode)
        return (", ".join(format_tag(t, replace_underscores, escape_parentheses) for t in tags),)


def split_ideas(query: str) -> list[str]:
    """Comma/newline separated ideas; prompt weights ``(idea:1.2)`` and brackets are dropped."""
    import re

    out = []
    for part in re.split(r"[,\n]+", query or ""):
        part = re.sub(r":[-+\d.\s]*$", "", part.strip().strip("()[]{}").strip()).strip("()[]{} ")
        if part:
            out.append(part)
    return out


def tags_for_ideas(query: str, per_idea: int = 1, semantic: bool | None = None) -> list[str]:
    """The best ``per_idea`` tags of each idea, in the order of the ideas, without repeats."""
    from tagloom.search import suggest

    seen: dict[str, None] = {}
    for idea in split_ideas(query):
        for hit in suggest(idea, limit=max(per_idea, 1), semantic=semantic)[:per_idea]:
            seen.setdefault(hit["tag"], None)
    return list(seen)


def format_tag(tag: str, replace_underscores: bool = True, escape_parentheses: bool = True) -> str:
    """The same formatting as the autocomplete popup (web/lib/tagloom-autocomplete-core.js formatTag)."""
    if replace_underscores and len(tag) > 3:  # ^_^ and o_o keep their underscore
        tag = tag.replace("_", " ")
    if escape_parentheses:
        tag = tag.replace("(", "\\(").replace(")", "\\)")
    return tag


NODE_CLASS_MAPPINGS = {"TagLoomTagSearch": TagLoomTagSearch}
NODE_DISPLAY_NAME_MAPPINGS = {"TagLoomTagSearch": "TagLoom Tag Search (ideas → tags)"}
