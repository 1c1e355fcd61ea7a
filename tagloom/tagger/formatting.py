"""Turning tag names into the strings users paste into prompts.

Options users of the existing tagger nodes rely on: replace underscores with spaces (but keep
kaomoji such as ``^_^`` intact), escape parentheses (``(`` -> ``\\(`` so ComfyUI/A1111 do not read
them as weights), exclude tags, always include tags, cap the number of tags, trailing comma, sort.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# Emoticon tags whose underscore is part of the face. Matching is on the raw Danbooru name.
KAOMOJI = frozenset({
    "0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9",
    ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||", "-_-", "t_t", ";_;", "*_*", "o_0",
})


def is_kaomoji(tag: str) -> bool:
    """Known emoticons, and short underscore tags with no word on either side (e.g. ``>_<``)."""
    if tag in KAOMOJI:
        return True
    if "_" not in tag or len(tag) > 7:
        return False
    parts = tag.split("_")
    return all(sum(ch.isalpha() for ch in part) <= 1 for part in parts)


def normalize_tag(tag: str) -> str:
    """The comparison key for exclude/include lists: case, spaces/underscores and escapes ignored."""
    t = tag.strip().replace("\\(", "(").replace("\\)", ")").lower()
    return t if is_kaomoji(t) else t.replace(" ", "_")


def parse_tag_list(text) -> list[str]:
    """'a, b,c' or ['a', 'b'] -> ['a', 'b', 'c'] (empty items dropped)."""
    if text is None:
        return []
    if isinstance(text, str):
        items = text.replace("\n", ",").split(",")
    else:
        items = list(text)
    return [t.strip() for t in items if t and t.strip()]


@dataclass(frozen=True)
class FormatOptions:
    replace_underscores: bool = True
    escape_parentheses: bool = True
    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] = ()  # always put first, in this order, unless excluded
    max_tags: int = 0  # 0 = no limit (always-include tags count towards it)
    trailing_comma: bool = False
    sort: str = "score"  # score (as given, highest first) | alpha | none
    separator: str = ", "
    extra: dict = field(default_factory=dict, compare=False)

    def with_overrides(self, **values) -> "FormatOptions":
        clean = {k: v for k, v in values.items() if v is not None}
        for key in ("exclude", "include"):
            if key in clean:
                clean[key] = tuple(parse_tag_list(clean[key]))
        if "max_tags" in clean:
            clean["max_tags"] = max(0, int(clean["max_tags"]))
        if "sort" in clean and clean["sort"] not in ("score", "alpha", "none"):
            raise ValueError(f"sort must be score, alpha or none, got {clean['sort']!r}")
        return replace(self, **clean)


def format_tag(tag: str, options: FormatOptions) -> str:
    out = tag
    if options.replace_underscores and not is_kaomoji(tag):
        out = out.replace("_", " ")
    if options.escape_parentheses:
        out = out.replace("\\(", "(").replace("\\)", ")")  # never double-escape
        out = out.replace("(", "\\(").replace(")", "\\)")
    return out


def select_tags(tags, options: FormatOptions) -> list[str]:
    """Apply include/exclude/sort/limit to raw tag names (in score order); no text formatting."""
    excluded = {normalize_tag(t) for t in options.exclude}
    seen: set[str] = set()
    chosen: list[str] = []
    for tag in list(options.include):
        key = normalize_tag(tag)
        if key not in excluded and key not in seen:
            seen.add(key)
            chosen.append(tag)
    rest = []
    for tag in tags:
        key = normalize_tag(tag)
        if key in excluded or key in seen:
            continue
        seen.add(key)
        rest.append(tag)
    if options.sort == "alpha":
        rest.sort(key=normalize_tag)
    chosen.extend(rest)
    if options.max_tags:
        chosen = chosen[: options.max_tags]
    return chosen


def join_tags(tags, options: FormatOptions) -> str:
    """Raw tag names (highest score first) -> the prompt string."""
    parts = [format_tag(t, options) for t in select_tags(tags, options)]
    text = options.separator.join(parts)
    if options.trailing_comma and text:
        text += options.separator.rstrip() if options.separator.strip() else ","
    return text


def split_tag_string(text: str) -> list[str]:
    """A prompt string back into tags (for the filter node): escapes undone, spaces kept."""
    return [t.replace("\\(", "(").replace("\\)", ")") for t in parse_tag_list(text)]


def parse_replacements(text: str) -> dict[str, str]:
    """'old=new' lines (or comma-separated pairs) -> {normalized old: new raw name}."""
    out: dict[str, str] = {}
    for line in (text or "").replace(",", "\n").splitlines():
        if "=" not in line:
            continue
        old, new = line.split("=", 1)
        if old.strip():
            out[normalize_tag(old)] = new.strip()
    return out


def filter_tag_string(text: str, options: FormatOptions, replace: str = "") -> str:
    """A prompt string -> filtered/formatted string (the tag-filter node and `tagloom` callers).

    Tags are brought back to raw Danbooru form first (escapes undone, spaces -> underscores except
    in kaomoji), so the output follows ``options`` whatever style the input had. A replacement to an
    empty name removes the tag.
    """
    repl = parse_replacements(replace)
    raw = []
    for tag in split_tag_string(text):
        key = normalize_tag(tag)
        if key in repl:
            if not repl[key]:
                continue
            key = normalize_tag(repl[key])
        raw.append(key if not is_kaomoji(key) else tag.strip())
    return join_tags(raw, options)
