"""The pack inside (a stand-in of) ComfyUI: TagLoomTagSearch over the DB in ComfyUI's data folder,
and the autocomplete route registered on PromptServer's route table through comfy_routes.py."""

from __future__ import annotations

import json
import urllib.request

import pytest
from autocomplete_fixtures import make_tag_db


def test_tag_search_node(comfy_pack):
    from tagloom.tags.db import default_path

    make_tag_db()  # default path = ComfyUI's user dir / tagloom, as the node will look there
    assert "user" in default_path().parts
    cls = comfy_pack.NODE_CLASS_MAPPINGS["TagLoomTagSearch"]
    assert "TagLoomTagSearch" in comfy_pack.NODE_DISPLAY_NAME_MAPPINGS
    inputs = cls.INPUT_TYPES()["required"]
    assert list(inputs) == ["query", "tags_per_idea", "semantic", "replace_underscores", "escape_parentheses",
                            "keep_unmatched"]
    node = cls()
    (tags,) = node.search("twin tails, (kitsune:1.2)\nlong ha, gany", 1, "off", True, True)
    assert tags == "twintails, fox girl, long hair, ganyu \\(genshin impact\\)"
    (tags,) = node.search("long", 2, "auto", False, False)
    assert tags == "long_hair, long_sleeves"
    assert node.search("  ,\n", 1, "off", True, True) == ("",)
    # an idea without a tag stays as written (CLIP reads plain words too), or is dropped
    assert node.search("zzqxv wibble, solo", 1, "off", True, True, True) == ("zzqxv wibble, solo",)
    assert node.search("zzqxv wibble, solo", 1, "off", True, True, False) == ("solo",)


def test_tag_search_node_semantic_on_without_index_fails_clearly(comfy_pack):
    from tagloom.errors import TagLoomError

    make_tag_db()
    node = comfy_pack.NODE_CLASS_MAPPINGS["TagLoomTagSearch"]()
    with pytest.raises(TagLoomError, match="index build"):
        node.search("two ponytails", 1, "on", True, True)


def test_route_registered_on_prompt_server(tmp_path):
    """comfy_routes.py puts /tagloom/autocomplete on PromptServer.instance.routes."""
    import comfy_stub
    from aiohttp import web
    from autocomplete_fixtures import Server

    routes = web.RouteTableDef()
    comfy_stub.install(tmp_path / "comfyui", routes=routes)
    try:
        comfy_stub.load_pack()
        make_tag_db()
        paths = [r.path for r in routes]
        assert paths.count("/tagloom/autocomplete") == 1

        class FromPromptServer(Server):  # serve exactly the table ComfyUI would serve
            def _app(self):
                app = web.Application()
                app.add_routes(routes)
                return app

        with FromPromptServer() as s:
            with urllib.request.urlopen(f"{s.url}/tagloom/autocomplete?q=miku", timeout=30) as r:
                body = json.loads(r.read())
        assert body["suggestions"][0]["tag"] == "hatsune_miku"
    finally:
        comfy_stub.uninstall()
