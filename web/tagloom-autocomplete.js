// ComfyUI adapter of the TagLoom tag autocomplete (the popup itself is web/lib/tagloom-autocomplete-core.js,
// shared with the WebUI). This file only: declares the settings, fetches from the pack's route on
// ComfyUI's server and picks which textareas get the popup.
//
// Textareas are found by `focusin` on the document, not by wrapping ComfyWidgets.STRING: the Vue
// node renderer ("Nodes 2.0") draws its own textareas that a widget hook never sees, and a focus
// listener also catches widgets created later (new nodes, subgraphs, loaded workflows).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { TagAutocomplete } from "./lib/tagloom-autocomplete-core.js";

const ID = "TagLoom.Autocomplete";
const SETTINGS = [
  {
    id: `${ID}.Enabled`,
    category: ["TagLoom", "Autocomplete", "Enabled"],
    name: "Tag autocomplete in text widgets",
    tooltip: "Suggest Danbooru tags while typing in any multiline text widget of a node.",
    type: "boolean",
    defaultValue: true,
  },
  {
    id: `${ID}.MaxResults`,
    category: ["TagLoom", "Autocomplete", "MaxResults"],
    name: "Maximum suggestions",
    type: "slider",
    attrs: { min: 1, max: 50, step: 1 },
    defaultValue: 10,
  },
  {
    id: `${ID}.Semantic`,
    category: ["TagLoom", "Autocomplete", "Semantic"],
    name: "Semantic suggestions (find tags by meaning)",
    tooltip: "Used when a semantic index is built (tagloom index build); off = name/alias completion only.",
    type: "boolean",
    defaultValue: true,
  },
  {
    id: `${ID}.ReplaceUnderscores`,
    category: ["TagLoom", "Autocomplete", "ReplaceUnderscores"],
    name: "Insert tags with spaces instead of underscores",
    type: "boolean",
    defaultValue: true,
  },
  {
    id: `${ID}.EscapeParentheses`,
    category: ["TagLoom", "Autocomplete", "EscapeParentheses"],
    name: "Escape parentheses in inserted tags, e.g. \\(genshin impact\\)",
    type: "boolean",
    defaultValue: true,
  },
  {
    id: `${ID}.Conflict`,
    category: ["TagLoom", "Autocomplete", "Conflict"],
    name: "When another tag autocomplete (tagcomplete) is installed too, whose popup opens",
    tooltip:
      "Only one popup ever opens. TagLoom: ours opens and the other one's is hidden while ours is open " +
      "(Tab/Enter are ours). Other: ours stays closed while the other one is installed and switched on.",
    type: "combo",
    options: [
      { text: "TagLoom", value: "tagloom" },
      { text: "The other autocomplete", value: "other" },
    ],
    defaultValue: "tagloom",
  },
];

function setting(id, fallback) {
  try {
    const value = app.extensionManager?.setting?.get(id);
    return value === undefined || value === null ? fallback : value;
  } catch (e) {
    return fallback; // an older frontend without extensionManager: defaults
  }
}

function readSettings() {
  return {
    enabled: setting(`${ID}.Enabled`, true),
    maxResults: setting(`${ID}.MaxResults`, 10),
    semantic: setting(`${ID}.Semantic`, true),
    replaceUnderscores: setting(`${ID}.ReplaceUnderscores`, true),
    escapeParentheses: setting(`${ID}.EscapeParentheses`, true),
    conflict: setting(`${ID}.Conflict`, "tagloom"),
  };
}

async function fetchSuggestions(query, { limit, semantic, signal }) {
  const params = new URLSearchParams({ q: query, limit: String(limit), semantic: semantic ? "auto" : "off" });
  // api.fetchApi adds ComfyUI's base path and auth headers
  const res = await api.fetchApi(`/tagloom/autocomplete?${params}`, { signal });
  if (!res.ok) throw new Error(`tagloom autocomplete: HTTP ${res.status}`);
  return res.json();
}

// A textarea that belongs to a node: the classic DOM widget (comfy-multiline-input) or any textarea
// inside a Vue-rendered node. Dialogs, the settings panel and the node search box are left alone.
function isNodeTextarea(el) {
  return (
    el instanceof HTMLTextAreaElement &&
    !el.readOnly &&
    !el.disabled &&
    (el.classList.contains("comfy-multiline-input") || !!el.closest("[data-node-id], .lg-node, .dom-widget"))
  );
}

app.registerExtension({
  name: ID,
  settings: SETTINGS,
  setup() {
    const autocomplete = new TagAutocomplete({ fetchSuggestions, getSettings: readSettings });
    document.addEventListener(
      "focusin",
      (e) => {
        if (isNodeTextarea(e.target)) autocomplete.attach(e.target);
      },
      true,
    );
    // a textarea that already has the focus when we load (rare) gets attached as well
    if (isNodeTextarea(document.activeElement)) autocomplete.attach(document.activeElement);
  },
});
