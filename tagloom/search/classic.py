"""Classic tag completion: prefix over names and aliases, word starts, and a typo-tolerant fallback.

Everything lives in sorted Python lists searched with ``bisect`` plus numpy arrays aligned with
them, so one query costs a few bisections and one ``argpartition`` over the matching range: well
under a millisecond for 140k tags (see docs/benchmarks.md), with no per-query allocation that grows
with the database.

Keys are normalised the same way for tags and queries (lower case, spaces as underscores, runs of
underscores collapsed, prompt escapes dropped), which makes matching underscore/space insensitive.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

import numpy as np

# Key kinds, in the order results are preferred when one tag matches several ways.
NAME, ALIAS, TRANSLATION, WORD = 0, 1, 2, 3
KIND_REASON = {NAME: "prefix", ALIAS: "alias", TRANSLATION: "translation", WORD: "word"}

_UNDERSCORES = re.compile(r"_+")
_NEEDS_WORK = re.compile(r"[A-Z\s\\]|__|^_|_$")


def _CLEAN(text: str) -> bool:
    return text.isascii() and not _NEEDS_WORK.search(text) if text else True


def normalize(text: str) -> str:
    """``Long  Hair`` -> ``long_hair``; ``\\(foo\\)`` -> ``(foo)`` (prompt escapes are typed, not tags)."""
    if _CLEAN(text):  # stored names and aliases are already canonical: skip the regexes (140k at load)
        return text
    text = text.strip().lower().replace("\\", "")
    text = _UNDERSCORES.sub("_", re.sub(r"\s+", "_", text))
    return text


@dataclass
class Hit:
    tag: int  # index into the engine's tag arrays
    kind: int  # NAME / ALIAS / WORD
    key: str  # the key that matched (the alias for ALIAS)
    exact: bool = False
    fuzzy: bool = False


class ClassicIndex:
    """Sorted keys over tag names, aliases and the word starts inside names."""

    def __init__(self, names: list[str], aliases: list[list[str]], post_counts: np.ndarray,
                 translations: list[list[str]] | None = None):
        self.post_count = np.asarray(post_counts, dtype=np.int64)
        direct: list[tuple[str, int, int]] = []
        words: list[tuple[str, int, int]] = []
        for i, name in enumerate(names):
            key = normalize(name)
            direct.append((key, NAME, i))
            # Word starts let "uniform" find school_uniform; they rank below true prefixes.
            for m in re.finditer(r"_(?=[^_])", key):
                words.append((key[m.end():], WORD, i))
            for alias in aliases[i]:
                direct.append((normalize(alias), ALIAS, i))
            # Translations complete like aliases, so 双马 finds twintails without a semantic index.
            for text in translations[i] if translations else ():
                direct.append((normalize(text), TRANSLATION, i))
        # Two sorted tables (names+aliases, word starts) so a range never needs filtering by kind.
        self.direct = _Table(direct, self.post_count)
        self.words = _Table(words, self.post_count)
        self.alphabet = sorted({c for c in set("".join(self.direct.keys)) if c.isascii()} - {"\\"})

    def __len__(self) -> int:
        return len(self.direct.keys) + len(self.words.keys)

    # --- persistence (tagloom/search/persist.py writes these to a file beside the database) -------
    def export(self) -> dict:
        """Everything ``restore`` needs to rebuild an equal index without sorting or normalising."""
        return {"direct": self.direct.export(), "words": self.words.export(), "alphabet": self.alphabet}

    @classmethod
    def restore(cls, post_counts: np.ndarray, data: dict) -> "ClassicIndex":
        self = cls.__new__(cls)
        self.post_count = np.asarray(post_counts, dtype=np.int64)
        self.direct = _Table.restore(data["direct"], self.post_count)
        self.words = _Table.restore(data["words"], self.post_count)
        self.alphabet = list(data["alphabet"])
        return self

    def search(self, query: str, limit: int = 10, fuzzy: bool = True) -> list[Hit]:
        """Hits in display order: exact matches, prefix (name or alias) by post count, word starts,
        then — only when those leave room — edit-distance-1 prefix matches."""
        q = normalize(query)
        if not q:
            return []
        seen: set[int] = set()
        out: list[Hit] = []

        def take(table: _Table, positions, fuzzy_hit=False):
            for p in positions:
                t = int(table.tag[p])
                if t in seen:
                    continue
                seen.add(t)
                key = table.keys[p]
                kind = int(table.kind[p])
                out.append(Hit(t, kind, key, exact=(key == q and kind != WORD and not fuzzy_hit), fuzzy=fuzzy_hit))

        # Over-fetch: one tag can appear under its name and several aliases.
        want = limit * 4 + 8
        d = self.direct
        lo, hi = d.range(q)
        exact = [p for p in range(lo, min(hi, lo + 64)) if d.keys[p] == q]
        exact.sort(key=lambda p: (d.kind[p], -d.key_pc[p]))
        take(d, exact)
        take(d, d.top(q, lo, hi, want))
        if len(out) < limit:
            w = self.words
            wlo, whi = w.range(q)
            take(w, w.top(q, wlo, whi, want))
        if fuzzy and len(out) < limit and len(q) >= 3:
            take(d, self._fuzzy(q, want), fuzzy_hit=True)
        return out[:limit]

    def _fuzzy(self, q: str, want: int) -> list[int]:
        """Keys whose prefix is one edit (delete, insert, substitute, swap) away from the query.

        Each variant is one bisection, so this is ~len(q) * |alphabet| lookups (about 1-2 ms for a
        12-letter query); matches are pooled and ranked by post count like prefix hits.
        """
        variants: set[str] = set()
        n = len(q)
        for i in range(n):
            variants.add(q[:i] + q[i + 1:])
            if i + 1 < n:
                variants.add(q[:i] + q[i + 1] + q[i] + q[i + 2:])
            for c in self.alphabet:
                variants.add(q[:i] + c + q[i + 1:])
                variants.add(q[:i] + c + q[i:])
        variants.discard(q)
        d = self.direct
        keys = d.keys
        pool: list[int] = []
        for v in variants:
            if len(v) < 2:
                continue
            lo = bisect.bisect_left(keys, v)
            if lo < len(keys) and keys[lo].startswith(v):
                hi = bisect.bisect_left(keys, v + "\U0010ffff", lo)
                pool.extend(d.top(v, lo, hi, 8))
        pool = sorted(set(pool), key=lambda p: -d.key_pc[p])
        return pool[:want]


class _Table:
    """Sorted keys with aligned tag/kind/post-count arrays, plus the top entries of every 1- and
    2-character prefix precomputed (those ranges span thousands of keys)."""

    SHORT = 2
    SHORT_TOP = 96

    def __init__(self, entries: list[tuple[str, int, int]], post_count: np.ndarray):
        entries.sort()
        n = len(entries)
        keys, kinds, tags = zip(*entries) if n else ((), (), ())
        self.keys: list[str] = list(keys)
        self.kind = np.array(kinds, dtype=np.int8)
        self.tag = np.array(tags, dtype=np.int32)
        self.key_pc = post_count[self.tag] if n else np.zeros(0, np.int64)
        self.short: dict[str, list[int]] = {}
        prefixes = set(map(lambda k: k[:1], self.keys)) | set(map(lambda k: k[:2], self.keys))
        for p in prefixes:
            lo, hi = self.range(p)
            if hi - lo > self.SHORT_TOP:
                self.short[p] = self._top(lo, hi, self.SHORT_TOP)

    def export(self) -> dict:
        short_keys = sorted(self.short)
        short_pos = np.array([self.short[k] for k in short_keys], dtype=np.int32).reshape(len(short_keys), self.SHORT_TOP)
        return {"keys": self.keys, "kind": self.kind, "tag": self.tag, "short_keys": short_keys, "short_pos": short_pos}

    @classmethod
    def restore(cls, data: dict, post_count: np.ndarray) -> "_Table":
        self = cls.__new__(cls)
        self.keys = data["keys"]
        self.kind = np.asarray(data["kind"], dtype=np.int8)
        self.tag = np.asarray(data["tag"], dtype=np.int32)
        n = len(self.keys)
        if len(self.kind) != n or len(self.tag) != n or (n and int(self.tag.max()) >= len(post_count)):
            raise ValueError("classic table arrays do not match")
        self.key_pc = post_count[self.tag] if n else np.zeros(0, np.int64)
        short_pos = np.asarray(data["short_pos"])
        if short_pos.shape != (len(data["short_keys"]), cls.SHORT_TOP) or (short_pos.size and int(short_pos.max()) >= n):
            raise ValueError("classic table short lists do not match")
        self.short = dict(zip(data["short_keys"], short_pos.tolist()))
        return self

    def range(self, prefix: str) -> tuple[int, int]:
        lo = bisect.bisect_left(self.keys, prefix)
        hi = bisect.bisect_left(self.keys, prefix + "\U0010ffff", lo)
        return lo, hi

    def top(self, prefix: str, lo: int, hi: int, want: int) -> list[int]:
        cached = self.short.get(prefix)
        if cached is not None and want <= self.SHORT_TOP:
            return cached[:want]
        return self._top(lo, hi, want)

    def _top(self, lo: int, hi: int, want: int) -> list[int]:
        """Entry positions in [lo, hi), most posts first, at most ``want``."""
        n = hi - lo
        if n <= 0:
            return []
        pcs = self.key_pc[lo:hi]
        if n > want:
            part = np.argpartition(-pcs, want - 1)[:want]
        else:
            part = np.arange(n)
        # Most posts first; for one tag's name and its aliases (same count) the name first.
        part = part[np.lexsort((self.kind[lo:hi][part], -pcs[part]))]
        return (part + lo).tolist()
