"""Tag database importers, export, stats and the `tagloom tags` CLI, on real files (the shared tag
list when present) and a real SQLite database."""

from __future__ import annotations

import json

import pytest

from tagloom.cli import main
from tagloom.errors import InputFileError
from tagloom.tags import TagDB
from tagloom.tags.importers import detect_format, import_file
from tagloom.tags.stats import compute, tier_of

TAGCOMPLETE = (
    '1girl,0,6008644,"1girls,sole_female"\n'
    'long_hair,0,4350743,"/lh,longhair"\n'
    'twintails,0,904712,"/tt,twintail,twin_tails"\n'
    "hatsune_miku,4,150000,miku\n"
    "wlop,1,900,\n"
    "highres,5,5256195,\n"
)


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_tagcomplete_import_is_idempotent_and_keeps_aliases(tmp_path):
    path = write(tmp_path, "danbooru.csv", TAGCOMPLETE)
    assert detect_format(path) == "tagcomplete"
    db = TagDB(tmp_path / "t.sqlite")
    first = import_file(db, path)
    assert first["tags"] == 6 and first["aliases_added"] == 8
    before = {t["name"]: t["changed_at"] for t in db.iter_tags()}
    second = import_file(db, path)
    assert second["aliases_added"] == 0 and db.count() == 6
    assert {t["name"]: t["changed_at"] for t in db.iter_tags()} == before  # nothing marked changed
    lh = db.get("/lh")
    assert lh["name"] == "long_hair" and lh["post_count"] == 4350743 and "/lh" in lh["aliases"]
    assert db.get("Hatsune Miku")["category"] == 4


def test_selected_tags_and_translations(tmp_path):
    sel = write(tmp_path, "selected_tags.csv", "tag_id,name,category,count\n9999999,general,9,807\n470575,1girl,0,4225150\n212816,solo,0,3496795\n")
    legacy = write(tmp_path, "zh.csv", 'twintails,0,"双马尾"\ncat_ears,0,"猫耳/猫耳朵"\nhighres,5,"高分辨率"\n')
    plain = write(tmp_path, "ja.csv", "twintails,ツインテール\n")
    assert [detect_format(p) for p in (sel, legacy, plain)] == ["selected_tags", "translations", "translations"]
    db = TagDB(tmp_path / "t.sqlite")
    import_file(db, write(tmp_path, "d.csv", TAGCOMPLETE))
    import_file(db, sel)
    assert db.get("general")["category"] == 9 and db.get("solo")["post_count"] == 3496795
    s = import_file(db, legacy)
    assert s["translations_added"] == 4 and s["tags_created"] == 1  # cat_ears was not in the list
    import_file(db, plain)
    t = db.get("twintails")
    assert t["translations"] == {"zh": ["双马尾"], "ja": ["ツインテール"]}
    assert sorted(db.get("cat_ears")["translations"]["zh"]) == ["猫耳", "猫耳朵"]
    assert db.get("highres")["category"] == 5  # a translation file never overrides the list's category


@pytest.mark.parametrize(
    "name,text,problem",
    [
        ("bad_cat.csv", "a,0,5\nb,x,3\n", "line 2: category must be a number"),
        ("bad_count.csv", "a,0,5\nb,0,many\n", "line 2: post_count must be a number"),
        ("bad.jsonl", '{"name": "a"}\n{"name": \n', "line 2: bad JSON"),
        ("empty.csv", "\n\n", "empty file"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, name, text, problem):
    path = write(tmp_path, name, text)
    with pytest.raises(InputFileError) as e:
        import_file(TagDB(tmp_path / "t.sqlite"), path)
    assert name in str(e.value) and problem in str(e.value)


def test_not_utf8_is_a_clear_error(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("a,0,5\ncaf\xe9,0,3\n".encode("latin-1"))
    with pytest.raises(InputFileError, match="latin1.csv.*not UTF-8"):
        import_file(TagDB(tmp_path / "t.sqlite"), path, "tagcomplete")


def test_export_round_trips_every_field(tmp_path, capsys):
    db_path = tmp_path / "t.sqlite"
    db = TagDB(db_path)
    import_file(db, write(tmp_path, "d.csv", TAGCOMPLETE))
    db.add_translations([("twintails", "zh", "双马尾")])
    db.set_description("twintails", "Two ponytails, one on each side of the head.")
    db.set_pack_category("twintails", "hair", "hairstyle", 0.9, "llm:test", "v1")
    db.close()
    for fmt in ("jsonl", "csv"):
        out = tmp_path / f"export.{fmt}"
        assert main(["tags", "export", "--db", str(db_path), "--format", fmt, "-o", str(out)]) == 0
        other = tmp_path / f"copy-{fmt}.sqlite"
        assert main(["tags", "import", str(out), "--db", str(other)]) == 0
        t = TagDB(other).get("twintails")
        assert t["translations"] == {"zh": ["双马尾"]} and t["description"].startswith("Two ponytails")
        assert (t["main_category"], t["sub_category"], t["category_source"]) == ("hair", "hairstyle", "llm:test")
        assert sorted(t["aliases"]) == ["/tt", "twin_tails", "twintail"] and t["post_count"] == 904712
    line = (tmp_path / "export.jsonl").read_text(encoding="utf-8").splitlines()[0]
    assert set(json.loads(line)) >= {"name", "category", "post_count", "aliases", "translations", "description", "main_category"}


def test_stats_tiers_and_coverage(tmp_path, capsys):
    db_path = tmp_path / "t.sqlite"
    db = TagDB(db_path)
    import_file(db, write(tmp_path, "d.csv", TAGCOMPLETE))
    db.set_pack_category("1girl", "people", None, 1.0, "human")
    s = compute(db)
    assert s["by_tier"][">1M"]["tags"] == 3 and s["by_tier"]["100k-1M"]["tags"] == 2 and s["by_tier"]["100-1k"]["tags"] == 1
    assert s["by_tier"][">1M"]["coverage"] == pytest.approx(1 / 3)
    assert s["by_tier"][">1M"]["post_weighted_coverage"] == pytest.approx(6008644 / (6008644 + 4350743 + 5256195))
    assert s["by_category"]["general"]["tags"] == 3 and s["by_main_category"] == {"people": {"tags": 1, "posts": 6008644}}
    assert tier_of(99) == "<100" and tier_of(100) == "100-1k" and tier_of(1_000_000) == ">1M"
    db.close()
    assert main(["tags", "stats", "--db", str(db_path)]) == 0
    out = capsys.readouterr().out
    assert "10k-100k" in out and "by posts" in out
    assert main(["tags", "stats", "--db", str(db_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tags"] == 6


def test_cli_bad_file_exits_2_without_traceback(tmp_path, capsys):
    path = write(tmp_path, "broken.csv", "a,0,5\nb,zero,3\n")
    assert main(["tags", "import", str(path), "--db", str(tmp_path / "t.sqlite")]) == 2
    err = capsys.readouterr().err
    assert "broken.csv: line 2" in err and "Traceback" not in err


def test_shared_tag_list_imports(tmp_path, shared_data):
    db = TagDB(tmp_path / "t.sqlite")
    s = import_file(db, shared_data / "danbooru.csv")
    assert s["format"] == "tagcomplete" and s["lines"] == db.count() > 100_000
    z = import_file(db, shared_data / "tags-zh-translations.csv")
    assert z["format"] == "translations" and z["translations_added"] > 600
    assert "双马尾" in db.get("twintails")["translations"]["zh"]
    assert db.get("/lh")["name"] == "long_hair"


def test_translation_for_an_alias_goes_to_its_tag(tmp_path):
    """Translation lists use old names (chinadress): the translation lands on the tag the alias
    names, and no stub tag is made for it."""
    db = TagDB(tmp_path / "t.sqlite")
    db.upsert_tags([{"name": "china_dress", "category": 0, "post_count": 30000}])
    db.add_aliases([("chinadress", "china_dress")])
    db.add_missing_tags([{"name": "chinadress", "category": 0}])  # the legacy format's stub, first
    db.add_translations([("chinadress", "zh", "旗袍"), ("not_in_the_list", "zh", "某物")])
    assert db.get("china_dress")["translations"] == {"zh": ["旗袍"]}
    names = {r[0] for r in db.conn.execute("SELECT name FROM tags")}
    assert names == {"china_dress", "not_in_the_list"}  # no stub 'chinadress'; unknown names wait for a tag list
