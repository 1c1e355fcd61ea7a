"""Type queries into a prompt box of the REAL ComfyUI page (the harness of ../shared/tools, not run
by the test suite) and check that TagLoom's popup shows rows for exactly each query, in the classic
renderer and, with --vue, in the Vue "Nodes 2.0" renderer; with --webui, in the real A1111 WebUI's
txt2img prompt (webui_harness.py, --url http://127.0.0.1:7861/).

    export HARNESS_DIR=... COMFY_MIRROR=...; python3 ../shared/tools/comfy_harness.py start .:ComfyUI-TagLoom
    $HARNESS_DIR/venv/bin/python tests/harness_popup_check.py [--vue] [--shot popup.png]

Needs the tag list imported into the harness (`tagloom --comfyui $HARNESS_DIR/ComfyUI tags import
../shared/data/danbooru.csv`). Prints one line per query and exits 1 when any query showed no popup
for itself within the time limit.
"""

from __future__ import annotations

import argparse
import sys
import time

QUERIES = ["long ha", "blue ey", "twin", "school unif", "thighh", "smil", "1gi", "sol", "look", "white shi",
           "black hai", "bare sho", "hair orn", "ahog", "holding", "open mo", "skir", "blush", "simple backg",
           "upper bo", "/lh", "双马", "kitsu", "cat ea", "red ey"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8199/")
    ap.add_argument("--vue", action="store_true", help="switch on the Vue node renderer first")
    ap.add_argument("--webui", action="store_true", help="the page is the A1111 WebUI (txt2img prompt)")
    ap.add_argument("--shot", help="screenshot of the last popup")
    ap.add_argument("--wait", type=float, default=8.0, help="seconds a popup may take")
    ap.add_argument("--query", action="append", help="type these instead of the built-in 25 (repeatable)")
    ap.add_argument("--rows", action="store_true", help="print every row of each popup, not only the first")
    args = ap.parse_args()
    queries = args.query or QUERIES
    from playwright.sync_api import sync_playwright

    failed = 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=[
            "--headless", "--no-sandbox", "--disable-quic", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        ready = "() => { const g = window.app && window.app.graph; return !!g && (g._nodes || g.nodes || []).length > 0; }"
        page.goto(args.url, wait_until="domcontentloaded")
        if args.webui:
            ready = "() => !!document.querySelector('#txt2img_prompt textarea')"
        try:
            page.wait_for_function(ready, timeout=45000, polling=500)
        except Exception:  # the first page load after a start can miss the graph: load it again
            page.reload(wait_until="domcontentloaded")
            page.wait_for_function(ready, timeout=120000, polling=500)
        page.wait_for_timeout(1500)
        for _ in range(2):
            page.keyboard.press("Escape")
        if args.vue:
            page.evaluate("() => app.extensionManager.setting.set('Comfy.VueNodes.Enabled', true)")
            time.sleep(3)
        if args.webui:
            page.wait_for_timeout(3000)  # the WebUI loads its scripts after the UI
        page.locator("textarea").first.wait_for(state="visible", timeout=30000)
        # the top-most visible prompt box (the default workflow's positive prompt)
        spots = [(b["y"], b["x"], i) for i, t in enumerate(page.locator("textarea").all())
                 if t.is_visible() and (b := t.bounding_box())]
        box = page.locator("#txt2img_prompt textarea") if args.webui else page.locator("textarea").nth(min(spots)[2])
        for q in queries:
            box.click()
            box.fill("masterpiece, ")
            box.press("End")
            started = time.monotonic()
            page.keyboard.type(q, delay=25)
            try:
                page.wait_for_function(
                    "(q) => { const p = document.querySelector('.tagloom-ac-popup, [class*=tagloom-ac]');"
                    " const rows = document.querySelectorAll('.tagloom-ac-item');"
                    " return rows.length > 0 && [...document.querySelectorAll('[data-query]')].some(e => e.dataset.query === q); }",
                    arg=q, timeout=args.wait * 1000)
                rows = page.locator(".tagloom-ac-item").all_inner_texts()
                shown = " | ".join(" ".join(r.split()) for r in rows) if args.rows else (rows[0].split()[0] if rows else "")
                print(f"ok   {q!r:16} {time.monotonic() - started:5.2f} s  {shown}")
            except Exception:
                failed += 1
                print(f"FAIL {q!r:16} no popup for this query within {args.wait} s")
            page.keyboard.press("Escape")
        if args.shot:
            box.click()
            box.fill("masterpiece, ")
            box.press("End")
            page.keyboard.type("long ha", delay=25)
            time.sleep(1.5)
            page.screenshot(path=args.shot)
        browser.close()
    print(f"{len(queries) - failed} of {len(queries)} queries showed their popup")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
