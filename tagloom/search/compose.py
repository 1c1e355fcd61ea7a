"""Chinese phrases completed from the translated words they are made of.

A translation list names single concepts (天使 -> ``angel``, 翅膀 -> ``wings``, 拿着 -> ``holding``);
users type the phrase (天使翅膀). When a CJK query matches no translation as typed, it is cut into the
longest known translations, left to right, and the general tags whose names hold the words of every
part are the completions: 天使翅膀 -> ``angel_wings``, 白色连衣裙 -> ``white_dress``. Built on first
use from the tag snapshot (general tags only: compositions are things in a picture), a few tens of
milliseconds for the shared list.
"""

from __future__ import annotations

import re

from tagloom.search.classic import normalize

_CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff]")
MAX_PART = 8  # characters in the longest translation tried at one position
MAX_UNMATCHED = 1  # characters no translation covers (a particle: 的, 着)


def is_cjk(text: str) -> bool:
    return bool(_CJK.search(text))


class Composer:
    def __init__(self, names, categories, post_counts, translations):
        """``translations``: per row, ``{lang: [text, ...]}`` (the engine snapshot's)."""
        self.names = names
        self.post_count = post_counts
        # translation text -> the most popular tag it names
        self.word_of: dict[str, int] = {}
        for row, langs in enumerate(translations):
            for texts in langs.values():
                for text in texts:
                    key = normalize(text)
                    if is_cjk(key) and (key not in self.word_of or post_counts[row] > post_counts[self.word_of[key]]):
                        self.word_of[key] = row
        # name word -> general tags whose name has it
        self.rows_with: dict[str, set[int]] = {}
        for row, (name, cat) in enumerate(zip(names, categories)):
            if cat == 0:
                for word in set(name.split("_")):
                    if word:
                        self.rows_with.setdefault(word, set()).add(row)

    def parts(self, query: str) -> list[tuple[str, int]]:
        """The query cut into known translations, longest first at each position: (text, row).
        Empty when fewer than two parts, or more than ``MAX_UNMATCHED`` characters are left over."""
        q = normalize(query)
        out, i, unmatched = [], 0, 0
        while i < len(q):
            for j in range(min(len(q), i + MAX_PART), i, -1):
                row = self.word_of.get(q[i:j])
                if row is not None:
                    out.append((q[i:j], row))
                    i = j
                    break
            else:
                unmatched += 1
                i += 1
        return out if len(out) >= 2 and unmatched <= MAX_UNMATCHED else []

    def complete(self, query: str, limit: int) -> list[tuple[int, str]]:
        """General tags whose name holds every word of every part's tag, most used first:
        (row, the parts joined by "+", shown as what matched)."""
        parts = self.parts(query)
        if not parts:
            return []
        words = {w for _, row in parts for w in self.names[row].split("_") if w}
        sets = sorted((self.rows_with.get(w, set()) for w in words), key=len)
        rows = set(sets[0]).intersection(*sets[1:]) if sets else set()
        # fewest extra words first (angel_wings before black_angel_wings), then the most used
        ranked = sorted(rows, key=lambda r: (len(self.names[r].split("_")) - len(words), -int(self.post_count[r])))
        shown = "+".join(text for text, _ in parts)
        return [(row, shown) for row in ranked[:limit]]
