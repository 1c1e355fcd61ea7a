// WebUI (A1111/Forge) adapter of the TagLoom tag autocomplete.
//
// The WebUI loads only files directly in javascript/ (.js as classic scripts, .mjs as modules), as
// "file=<path>" URLs; a relative import therefore resolves to the same extension's web/ folder, so
// the popup core is shared with ComfyUI's adapter instead of being copied. The route is registered
// by scripts/tagloom.py on the WebUI's FastAPI app; settings come from the WebUI's `opts`
// (Settings > TagLoom), read on every keystroke so a change applies without a reload.
import { TagAutocomplete } from "../web/lib/tagloom-autocomplete-core.js";

const PROMPT_BOXES = "#txt2img_prompt, #txt2img_neg_prompt, #img2img_prompt, #img2img_neg_prompt";

function opt(name, fallback) {
  const o = globalThis.opts;
  return o && o[name] !== undefined && o[name] !== null ? o[name] : fallback;
}

function readSettings() {
  return {
    enabled: opt("tagloom_autocomplete_enabled", true),
    maxResults: opt("tagloom_autocomplete_max_results", 10),
    semantic: opt("tagloom_autocomplete_semantic", true),
    replaceUnderscores: opt("tagloom_autocomplete_replace_underscores", true),
    escapeParentheses: opt("tagloom_autocomplete_escape_parentheses", true),
    // tagcomplete (a1111-sd-webui-tagcomplete) installed too: whose popup opens (core: TAGCOMPLETE)
    conflict: opt("tagloom_autocomplete_conflict", "tagloom"),
  };
}

async function fetchSuggestions(query, { limit, semantic, signal }) {
  const params = new URLSearchParams({ q: query, limit: String(limit), semantic: semantic ? "auto" : "off" });
  // relative to the page, so a WebUI served under --subpath still reaches its own route
  const url = new URL(`tagloom/autocomplete?${params}`, document.baseURI);
  const res = await fetch(url, { signal, credentials: "same-origin" });
  if (!res.ok) throw new Error(`tagloom autocomplete: HTTP ${res.status}`);
  return res.json();
}

function isPromptBox(el) {
  return el instanceof HTMLTextAreaElement && !!el.closest(PROMPT_BOXES);
}

const autocomplete = new TagAutocomplete({ fetchSuggestions, getSettings: readSettings });
// gradio renders the prompt boxes after this module ran, and re-renders them; focus tells us
// which textarea the user is in without depending on when the UI was built
document.addEventListener(
  "focusin",
  (e) => {
    const el = e.composedPath ? e.composedPath()[0] : e.target;
    if (isPromptBox(el)) autocomplete.attach(el);
  },
  true,
);
globalThis.tagloomAutocomplete = autocomplete; // for debugging and the harness check
