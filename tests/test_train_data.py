"""Dataset preparation and the Danbooru fetcher (against a real aiohttp server on 127.0.0.1)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from train_data import make_dataset
from tagloom.training.data import prepare as prep
from tagloom.training.data.dataset import repeats_for, scan

REPO = Path(__file__).resolve().parents[1]


def test_scan_captions_subfolders_and_repeats(tmp_path):
    make_dataset(tmp_path, 3, seed=1, sub="10_miku")
    make_dataset(tmp_path, 2, seed=2, sub="plain/deeper", caption_ext=".caption")
    items = scan(tmp_path)
    assert len(items) == 5
    by_group = {i.group for i in items}
    assert by_group == {"10_miku", "plain"}
    assert all(i.repeats == 10 for i in items if i.group == "10_miku")
    assert all(i.repeats == 1 and i.caption_path.suffix == ".caption" for i in items if i.group == "plain")
    assert repeats_for(("a", "3_x", "img.png")) == 3


def test_prepare_reports_problems_without_crashing(tmp_path):
    ds = tmp_path / "ds"
    paths = make_dataset(ds, 12)
    (ds / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")  # truncated image
    (ds / "broken.txt").write_text("general, red")
    shutil.copy(paths[0], ds / "nocap.png")  # no caption (and a duplicate of img 0 by content)
    shutil.copy(paths[1], ds / "dup.png")
    shutil.copy(paths[1].with_suffix(".txt"), ds / "dup.txt")
    shutil.copy(paths[2], ds / "empty.png")
    (ds / "empty.png").write_bytes((ds / "empty.png").read_bytes() + b"x")  # distinct content
    (ds / "empty.txt").write_text(" , \n")
    result = prep.prepare(ds, min_count=2, val_fraction=0.25, seed=0)
    kinds = {(p.path, p.kind) for p in result.problems}
    assert ("broken.png", "unreadable") in kinds
    assert ("nocap.png", "missing_caption") in kinds
    assert ("empty.png", "empty_caption") in kinds
    assert any(p.kind == "duplicate" and p.path in ("dup.png", paths[1].name) for p in result.problems)
    assert len(result.items) == 12
    # ratings first, then general tags by count; min-count honoured
    names = [t[0] for t in result.tags]
    assert names[0] == "general" and result.tags[0][1] == 9
    assert all(n >= 2 for _name, cat, n in result.tags if cat != 9)
    # deterministic split, stable when images are added
    again = prep.prepare(ds, min_count=2, val_fraction=0.25, seed=0)
    assert [i.rel for i in again.val] == [i.rel for i in result.val] and result.val
    make_dataset(ds, 6, seed=9)
    more = prep.prepare(ds, min_count=2, val_fraction=0.25, seed=0)
    old_val = {i.rel for i in result.val}
    assert old_val <= {i.rel for i in more.val}
    assert not old_val & {i.rel for i in more.train}


def test_categories_come_from_the_tag_db(tmp_path):
    from tagloom.tags.db import TagDB

    ds = tmp_path / "ds"
    make_dataset(ds, 4)
    (ds / "img_0_000.txt").write_text("Hatsune Miku, wlop, red, explicit, vocaloid")
    db = tmp_path / "tags.sqlite"
    with TagDB(db) as t:
        t.upsert_tags([{"name": "hatsune_miku", "category": 4, "post_count": 10},
                       {"name": "wlop", "category": 1, "post_count": 5},
                       {"name": "vocaloid", "category": 3, "post_count": 5}])
    result = prep.prepare(ds, tag_db=db)
    cats = {n: c for n, c, _ in result.tags}
    assert cats["hatsune_miku"] == 4 and cats["wlop"] == 1 and cats["vocaloid"] == 3
    assert cats["explicit"] == 9 and cats["red"] == 0
    order = [c for _n, c, _ in result.tags]
    assert order.index(9) < order.index(0) < order.index(4) < order.index(1)


def test_prepare_cli_writes_outputs(tmp_path):
    ds = tmp_path / "ds"
    make_dataset(ds, 8)
    out = tmp_path / "prepared"
    r = subprocess.run([sys.executable, "-m", "tagloom", "train", "prepare", str(ds), "--out", str(out), "--min-count", "2"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (out / "selected_tags.csv").read_text().startswith("tag_id,name,category,count")
    split = json.loads((out / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) == 8
    r = subprocess.run([sys.executable, "-m", "tagloom", "train", "prepare", str(tmp_path / "nope"), "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "dataset folder not found" in r.stderr


def test_captioner_hook_fills_missing_captions(tmp_path):
    ds = tmp_path / "ds"
    paths = make_dataset(ds, 3)
    paths[0].with_suffix(".txt").unlink()
    result = prep.prepare(ds, captioner=lambda ps: [["general", "auto_tag"] for _ in ps])
    assert paths[0].with_suffix(".txt").read_text().strip() == "general, auto_tag"
    assert any(p.kind == "captioned" for p in result.problems)
    assert "auto_tag" in [t[0] for t in result.tags]


# --- Danbooru fetcher against a local server ------------------------------------------------------
def _png_bytes(colour):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def booru(unused_port_server):
    return unused_port_server


@pytest.fixture
def unused_port_server():
    """A real aiohttp server on 127.0.0.1 that speaks the part of Danbooru's posts API we use."""
    import asyncio
    import threading

    from aiohttp import web

    posts = []
    for pid in range(110, 100, -1):  # newest first, like Danbooru
        post = {"id": pid, "rating": "gs"[pid % 2], "file_ext": "png", "md5": f"m{pid}",
                "tag_string_general": "1girl solo long_hair", "tag_string_character": "hatsune_miku",
                "tag_string_copyright": "vocaloid", "tag_string_artist": "wlop",
                "is_deleted": False, "is_banned": False}
        if pid == 109:
            post["is_deleted"] = True
        if pid == 108:
            post["is_banned"] = True
        if pid == 107:
            post["file_ext"] = "mp4"
        post["file_url"] = None if pid == 106 else f"/data/{pid}.{post['file_ext']}"
        posts.append(post)
    state = {"requests": [], "throttled": False, "auth": []}

    async def posts_json(request):
        state["requests"].append(dict(request.query))
        if "too many" in request.query.get("tags", ""):
            return web.json_response({"success": False, "message": "You cannot search for more than 2 tags at a time"},
                                     status=422)
        state["auth"].append(request.headers.get("Authorization"))
        if not state["throttled"]:
            state["throttled"] = True
            return web.Response(status=429, headers={"Retry-After": "0.1"})
        limit = int(request.query.get("limit", 20))
        page = request.query.get("page", "")
        rows = posts
        if page.startswith("b"):
            rows = [p for p in posts if p["id"] < int(page[1:])]
        rows = rows[: min(limit, 3)]  # small pages so paging and the cursor are exercised
        base = f"http://127.0.0.1:{state['port']}"
        out = [dict(p, file_url=base + p["file_url"]) if p["file_url"] else p for p in rows]
        return web.json_response(out)

    async def data(request):
        state.setdefault("files", []).append(request.match_info["name"])
        pid = int(request.match_info["name"].split(".")[0])
        return web.Response(body=_png_bytes((200, pid, 10)), content_type="image/png")

    app = web.Application()
    app.router.add_get("/posts.json", posts_json)
    app.router.add_get("/data/{name}", data)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    state["port"] = site._server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield state
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.run_until_complete(runner.cleanup())
    loop.close()


def test_fetch_danbooru_skips_resumes_and_rate_limits(tmp_path, booru, monkeypatch):
    from tagloom.training.data.danbooru import FetchOptions, fetch

    monkeypatch.setenv("DANBOORU_LOGIN", "alice")
    monkeypatch.setenv("DANBOORU_API_KEY", "s3cret")
    base = f"http://127.0.0.1:{booru['port']}"
    out = tmp_path / "ds"
    opts = FetchOptions(tags="hatsune_miku", limit=2, out=out, base_url=base, character=True, rate=50)
    r1 = fetch(opts, log=lambda s: None)
    assert r1.downloaded == 2
    assert {"deleted", "banned", "not_image_mp4", "no_file_url"} >= set(r1.skipped)
    assert (out / "110.txt").read_text().strip() == "general, 1girl, solo, long_hair, hatsune_miku"
    assert (out / "105.txt").read_text().startswith("sensitive, ")
    # resume with a larger limit: nothing downloaded twice, paging continues from the cursor
    files_before = list(booru["files"])
    opts.limit = 4
    r2 = fetch(opts, log=lambda s: None)
    assert r2.existing == 2 and r2.downloaded == 2
    assert not set(files_before) & set(booru["files"][len(files_before):])
    assert sorted(p.name for p in out.glob("*.png")) == ["103.png", "104.png", "105.png", "110.png"]
    assert booru["auth"][-1].startswith("Basic ")  # credentials go in a header, never in the URL
    assert all("api_key" not in q for q in booru["requests"])
    assert "s3cret" not in (out / ".danbooru.json").read_text()
    # a refused search is an error that carries the server's reason
    from tagloom.errors import TagLoomError

    with pytest.raises(TagLoomError, match="more than 2 tags"):
        fetch(FetchOptions(tags="too many tags", limit=1, out=tmp_path / "other", base_url=base, rate=50), log=lambda s: None)
    # the dataset it wrote is a valid training set
    result = prep.prepare(out)
    assert len(result.items) == 4 and not result.problems


def test_fetch_danbooru_dead_server_is_a_clear_error(tmp_path):
    from tagloom.errors import TagLoomError
    from tagloom.training.data.danbooru import FetchOptions, fetch

    opts = FetchOptions(tags="x", limit=1, out=tmp_path / "ds", base_url="http://127.0.0.1:9", rate=100, retries=1)
    with pytest.raises(TagLoomError, match="127.0.0.1:9"):
        fetch(opts, log=lambda s: None)


def test_caption_missing_with_our_tagger(tmp_path):
    """`prepare --caption-missing MODEL` tags uncaptioned images with the pack's tagger (tiny EVA-02)."""
    from tiny_models import make_tiny_tagger

    model = make_tiny_tagger(tmp_path / "tagger")
    ds = tmp_path / "ds"
    paths = make_dataset(ds, 3)
    paths[1].with_suffix(".txt").unlink()
    result = prep.prepare(ds, captioner=prep.tagger_captioner(str(model)))
    caption = paths[1].with_suffix(".txt").read_text().strip().split(", ")
    assert caption[0] in {"general", "sensitive", "questionable", "explicit"}  # the rating comes first
    assert len(result.items) == 3
