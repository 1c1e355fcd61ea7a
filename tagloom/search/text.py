"""The text each tag is embedded as.

``【general】school uniform - <description> | aka seifuku, sailor fuku | 中文: 水手服``

The category in brackets disambiguates homonyms across categories (a character vs a general tag of
the same words); the name is written with spaces because sub-word tokenizers split ``a_b`` badly;
aliases (minus the ``/xx`` typing shortcuts) and translations put other words for the same tag into
the vector, which is what makes "two ponytails" and "双马尾" land on ``twintails``. The description
(the Danbooru wiki's first sentences, or ``tagloom describe``'s line) is trimmed to whole sentences
within ``MAX_DESCRIPTION`` characters and each language to ``MAX_TRANSLATIONS`` names: short texts
embed faster, and the first sentence carries the meaning.

A tag is re-embedded when this text changes (its hash, build.py), so only tags whose description,
aliases, translations or categories changed are embedded again.
"""

from __future__ import annotations

import hashlib

from tagloom.tags.db import DANBOORU_CATEGORIES
from tagloom.tags.wiki import trim

LANG_LABEL = {"zh": "中文", "ja": "日本語", "ko": "한국어", "en": "en"}
MAX_ALIASES = 6
MAX_TRANSLATIONS = 4
MAX_DESCRIPTION = 160


def entry_text(tag: dict) -> str:
    cat = DANBOORU_CATEGORIES.get(tag.get("category"), "tag")
    text = f"【{cat}】{tag['name'].replace('_', ' ')}"
    desc = trim(" ".join((tag.get("description") or "").split()), MAX_DESCRIPTION)
    if desc:
        text += f" - {desc}"
    aliases = [a.replace("_", " ") for a in tag.get("aliases") or [] if not a.startswith("/")]
    if aliases:
        text += " | aka " + ", ".join(aliases[:MAX_ALIASES])
    for lang, texts in sorted((tag.get("translations") or {}).items()):
        if texts:
            text += f" | {LANG_LABEL.get(lang, lang)}: " + ", ".join(texts[:MAX_TRANSLATIONS])
    if tag.get("main_category"):
        text += f" | {tag['main_category']}" + (f"/{tag['sub_category']}" if tag.get("sub_category") else "")
    return text


def text_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]
