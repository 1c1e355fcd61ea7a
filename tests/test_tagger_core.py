"""Labels, thresholds (file, defaults, overrides, MCut), interpretation and formatting options."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tagloom.errors import InputFileError
from tagloom.tagger import FormatOptions, Thresholds, interpret, join_tags, mcut_threshold, read_threshold_json
from tagloom.tagger.formatting import filter_tag_string, format_tag, is_kaomoji
from tagloom.tagger.labels import read_labels, read_selected_tags
from tagloom.tagger.thresholds import find_threshold_file, model_thresholds
from tiny_models import TINY_TAGS, write_selected_tags


@pytest.fixture
def labels(tmp_path):
    return read_selected_tags(write_selected_tags(tmp_path / "selected_tags.csv"))


def test_selected_tags_groups(labels):
    assert len(labels) == len(TINY_TAGS)
    assert [labels.names[i] for i in labels.rating] == ["general", "sensitive", "questionable", "explicit"]
    assert [labels.names[i] for i in labels.character] == ["hatsune_miku", "hakurei_reimu"]
    assert [labels.names[i] for i in labels.artist] == ["wlop", "ask_(askzy)"]
    assert "1girl" in [labels.names[i] for i in labels.general]


@pytest.mark.parametrize("content, problem", [
    ("", "name"),
    ("tag_id,label,kind\n1,a,0\n", "name"),
    ("tag_id,name,category,count\n1,a,zero,5\n", "line 2"),
    ("tag_id,name,category,count\n1,,0,5\n", "empty tag name"),
    ("tag_id,name,category,count\n", "no tags"),
])
def test_malformed_selected_tags(tmp_path, content, problem):
    path = tmp_path / "selected_tags.csv"
    path.write_text(content)
    with pytest.raises(InputFileError) as e:
        read_selected_tags(path)
    assert str(path) in str(e.value) and problem in str(e.value)


def test_missing_label_file_names_it(tmp_path):
    with pytest.raises(InputFileError, match="selected_tags.csv"):
        read_labels(tmp_path)


def test_threshold_defaults_file_and_overrides(tmp_path):
    t = Thresholds()
    assert (t.general, t.character, t.artist, t.caption, t.tags) == (0.35, 0.75, 0.75, 0.35, 0.35)
    assert model_thresholds(tmp_path) == t  # no threshold.json -> defaults
    path = tmp_path / "threshold.json"
    path.write_text(json.dumps({"general": 0.5, "character": 0.9, "mcut_general": True, "f1": 0.7}))
    t2 = read_threshold_json(path)
    assert t2.general == 0.5 and t2.character == 0.9 and t2.artist == 0.75 and t2.mcut_general
    assert model_thresholds(tmp_path) == t2
    assert t2.with_overrides(general=0.2, artist=None).general == 0.2
    with pytest.raises(ValueError):
        t2.with_overrides(general=1.5)


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    ("[0.3]", "JSON object"),
    ('{"general": "high"}', "'general'"),
    ('{"character": 2}', "'character'"),
    ('{"mcut_general": 1}', "mcut_general"),
])
def test_malformed_threshold_json(tmp_path, content, problem):
    path = tmp_path / "threshold.json"
    path.write_text(content)
    with pytest.raises(InputFileError) as e:
        read_threshold_json(path)
    assert str(path) in str(e.value) and problem in str(e.value)


def test_threshold_file_must_stay_in_allowed_folders(tmp_path):
    allowed = tmp_path / "models"
    allowed.mkdir()
    (allowed / "t.json").write_text("{}")
    (tmp_path / "secret.json").write_text("{}")
    assert find_threshold_file("t.json", [allowed]) == (allowed / "t.json").resolve()
    from tagloom.errors import TagLoomError

    with pytest.raises(TagLoomError, match="outside"):
        find_threshold_file(str(tmp_path / "secret.json"), [allowed])
    with pytest.raises(InputFileError):
        find_threshold_file("../secret.json", [allowed])


def test_mcut():
    assert mcut_threshold([0.9, 0.85, 0.2, 0.1]) == pytest.approx(0.525)
    assert mcut_threshold([]) == 1.0


def _probs(labels, values: dict) -> np.ndarray:
    p = np.zeros(len(labels), np.float32)
    for name, v in values.items():
        p[labels.names.index(name)] = v
    return p


def test_interpret_groups_rating_caption_tags(labels):
    p = _probs(labels, {"general": 0.2, "sensitive": 0.7, "questionable": 0.1, "1girl": 0.99, "solo": 0.5,
                        "smile": 0.36, "long_hair": 0.3, "hatsune_miku": 0.8, "hakurei_reimu": 0.6,
                        "wlop": 0.76, "^_^": 0.4})
    r = interpret(p, labels, Thresholds(caption=0.45, tags=0.39))
    assert r.rating == "sensitive" and list(r.ratings)[:2] == ["sensitive", "general"]
    assert list(r.general) == ["1girl", "solo", "^_^", "smile"]  # sorted by score, >= 0.35
    assert list(r.character) == ["hatsune_miku"] and list(r.artist) == ["wlop"]
    assert r.caption == "hatsune miku, 1girl, solo, wlop"  # >= caption threshold 0.45
    assert r.tags == "1girl, solo, ^_^"  # general >= tags threshold 0.39; kaomoji kept
    j = r.to_json()
    assert set(j) == {"file", "ratings", "general", "character", "artist", "caption", "tags"}
    mc = interpret(p, labels, Thresholds(mcut_general=True))
    assert list(mc.general) == ["1girl"]  # largest gap 0.99 -> 0.5


def test_formatting_options():
    assert format_tag("long_hair", FormatOptions()) == "long hair"
    assert format_tag("^_^", FormatOptions()) == "^_^"
    assert format_tag(">_<", FormatOptions()) == ">_<"
    assert format_tag("ask_(askzy)", FormatOptions()) == "ask \\(askzy\\)"
    assert format_tag("ask_(askzy)", FormatOptions(escape_parentheses=False, replace_underscores=False)) == "ask_(askzy)"
    assert is_kaomoji("o_o") and not is_kaomoji("long_hair")
    tags = ["1girl", "solo", "long_hair", "smile"]
    opts = FormatOptions().with_overrides(exclude="solo, Long Hair", include="masterpiece", max_tags=3,
                                          trailing_comma=True)
    assert join_tags(tags, opts) == "masterpiece, 1girl, smile,"
    assert join_tags(tags, FormatOptions(sort="alpha")) == "1girl, long hair, smile, solo"


def test_filter_tag_string_normalises_and_replaces():
    text = "long hair, ask \\(askzy\\), ^_^, solo, blush"
    opts = FormatOptions(replace_underscores=False, escape_parentheses=False)
    assert filter_tag_string(text, opts, "solo=1girl\nblush=") == "long_hair, ask_(askzy), ^_^, 1girl"
