// TagLoom tag autocomplete: the one core shared by the ComfyUI and the WebUI adapters.
//
// An ES module with NO side effects on import: ComfyUI imports every .js under WEB_DIRECTORY as an
// extension module, and the WebUI's javascript/tagloom-autocomplete.mjs imports this file through
// the extension's own URL (../web/lib/...). Nothing here knows about either host: the adapter
// passes in how to fetch suggestions and how to read settings, and decides which textareas get
// attached. The style sheet and the popup element are created on first use, not on import.

export const CATEGORY_COLORS = {
  general: "#4ea6ff",
  artist: "#ff6b6b",
  copyright: "#d38cff",
  character: "#4cd964",
  meta: "#ffb347",
  rating: "#bbbbbb",
  unknown: "#cfcfcf",
};
const CATEGORY_BY_ID = { 0: "general", 1: "artist", 3: "copyright", 4: "character", 5: "meta", 9: "rating" };

export const DEFAULT_SETTINGS = {
  enabled: true,
  maxResults: 10,
  semantic: true, // true: the server's choice (semantic when an index is built); false: classic only
  replaceUnderscores: true,
  escapeParentheses: true,
  debounceMs: 120,
  minChars: 1,
  // Another tag autocomplete on the same page (tagcomplete): "tagloom" = ours opens and theirs is
  // hidden while ours is open; "other" = ours stays closed while theirs is installed and active.
  conflict: "tagloom",
};

/**
 * Other tag autocompletes we know how to detect and silence. a1111-sd-webui-tagcomplete keeps its
 * configuration in the page-global `TAC_CFG` (`activeIn.global` is its on/off switch) and shows
 * its rows in a `.autocompleteResults` element inside an `.autocompleteParent` wrapper per
 * textarea, shown and hidden through the wrapper's inline `display`.
 *   global:    a page-global config object whose presence means "installed"
 *   enabled:   (config) -> false when the other one is switched off
 *   selector:  its popup elements (detection when there is no global, and hidden by CSS)
 *   container: the element whose inline display it toggles; set to none when ours closes over it,
 *              so it does not come back (and take keys) until the user types again
 */
export const TAGCOMPLETE = {
  name: "tagcomplete",
  global: "TAC_CFG",
  enabled: (cfg) => !(cfg && cfg.activeIn && cfg.activeIn.global === false),
  selector: ".autocompleteParent, .autocompleteResults",
  container: ".autocompleteParent",
};

/** The first of `others` that is installed and active on this page, or null. */
export function detectOther(doc, others = [TAGCOMPLETE], global = globalThis) {
  for (const o of others) {
    const cfg = o.global && global ? global[o.global] : undefined;
    if (cfg !== undefined && cfg !== null) {
      if (!o.enabled || o.enabled(cfg)) return o;
      continue; // installed but switched off
    }
    if (o.selector && doc && doc.querySelector(o.selector)) return o;
  }
  return null;
}

// Characters that end one tag and start the next. Brackets count, so "(long ha" completes
// "long ha" and keeps the "(" and any ":1.2)" weight around it.
const SEPARATORS = ",\n()[]{}<>|";

function isEscaped(text, i) {
  let n = 0;
  for (let j = i - 1; j >= 0 && text[j] === "\\"; j--) n++;
  return n % 2 === 1;
}

/**
 * The tag being typed at `caret`: {start, end, query, raw} or null when nothing should be
 * suggested (empty word, a weight being typed after ":", inside <lora:...> syntax).
 * `start`..`end` is the range a completion replaces (the whole word around the caret).
 */
export function currentToken(text, caret) {
  if (caret == null || caret < 0 || caret > text.length) return null;
  let i = caret - 1;
  while (i >= 0 && !(SEPARATORS.includes(text[i]) && !isEscaped(text, i))) i--;
  const opener = i >= 0 ? text[i] : "";
  if (opener === "<") return null; // <lora:name:0.8>, <embedding>: not tags
  let start = i + 1;
  while (start < caret && /\s/.test(text[start])) start++;
  let raw = text.slice(start, caret);
  if (!raw.trim()) return null;
  const colon = raw.lastIndexOf(":");
  if (colon > 0 && !isEscaped(raw, colon)) {
    const before = raw.slice(0, colon).trim();
    const after = raw.slice(colon + 1);
    if (before && /^\s*[-+\d.]*\s*$/.test(after)) return null; // "(tag:1.2" -> typing a weight
    if (opener === "[" && before) { // [from:to:when] prompt editing: complete the part after ":"
      start += colon + 1;
      while (start < caret && /\s/.test(text[start])) start++;
      raw = text.slice(start, caret);
      if (!raw.trim()) return null;
    }
  }
  // the rest of the word after the caret (the user went back into a tag) is replaced too
  let end = caret;
  while (end < text.length && !/[\s,()[\]{}<>|:\\]/.test(text[end])) end++;
  const query = unescape(raw);
  if (!query) return null;
  // Prompts written as sentences have no commas: "a girl with long ha". When the whole phrase
  // matches nothing, its last words are tried ("with long ha", "long ha", "ha"), longest first.
  const tails = [];
  const re = /\s+/g;
  let m;
  while ((m = re.exec(raw)) !== null) {
    const at = m.index + m[0].length;
    if (at < raw.length) tails.push({ start: start + at, query: unescape(raw.slice(at)) });
  }
  return { start, end, query, raw, tails: tails.slice(-3) };
}

/**
 * The brackets still open at `pos`: a string of "(", "[" and "{", outermost first, escaped ones
 * (`\(`) ignored; a closer pops its opener. `<` and `>` are not counted: nothing is suggested
 * inside `<lora:...>`, and a kaomoji like `>_<` earlier in the prompt must not open a group.
 * "masterpiece, ((blonde ha" -> "((" ; "[red|blu" -> "[" ; "(a:1.2), b" -> "".
 */
export function openGroups(text, pos = text.length) {
  const stack = [];
  const pairs = { ")": "(", "]": "[", "}": "{" };
  for (let i = 0; i < pos && i < text.length; i++) {
    const c = text[i];
    if (c === "\\") {
      i++; // the escaped character is text
      continue;
    }
    if (c === "(" || c === "[" || c === "{") stack.push(c);
    else if (pairs[c]) {
      const at = stack.lastIndexOf(pairs[c]);
      if (at >= 0) stack.length = at; // a closer also closes anything left open inside it
    }
  }
  return stack.join("");
}

/**
 * A formatted tag made safe for the group it goes into: inside `[...]` (prompt editing
 * `[from:to:when]`, alternation `[a|b]`) a `:` or `|` in the tag (`:d`, `:3`) would split the
 * group, so it is escaped (`\:d`). Elsewhere the tag is unchanged.
 */
export function escapeForGroup(tag, groups) {
  if (!groups || groups[groups.length - 1] !== "[") return tag;
  return tag.replace(/(^|[^\\])([:|])/g, "$1\\$2");
}

function unescape(text) {
  return text.replace(/\\(.)/g, "$1").trim();
}

/** A tag as it goes into the prompt: `long_hair` -> `long hair`, `(` -> `\(` (by setting). */
export function formatTag(tag, settings = DEFAULT_SETTINGS) {
  let out = String(tag);
  // short kaomoji-like tags (^_^, o_o, >_<) lose their meaning without the underscore
  if (settings.replaceUnderscores && out.length > 3) out = out.replace(/_/g, " ");
  if (settings.escapeParentheses) out = out.replace(/([()])/g, "\\$1");
  return out;
}

/**
 * What accepting `inserted` for `token` does to `text`: {start, end, insert, caret}, the range of
 * the old text to replace, its replacement and where the caret goes in the new text.
 * The rules (docs/autocomplete.md, "Accepting inside brackets"):
 *   1. a comma already after the word is reused: "tag ,  next" -> "tag, next", caret after ", ";
 *   2. a closer, weight or separator right after the word (`)`, `]`, `}`, `>`, `:`, `|`): the tag
 *      only, the rest stays: "(blonde ha:1.2)" -> "(blonde hair:1.2)", "[a|blu]" -> "[a|blue]";
 *   3. inside a bracket still open at the word (`(`, `[`, `{`), the tag only, no ", ": the group
 *      is the user's to finish (`:1.2)`, `)`, `|b]`, `, next`): "(blonde ha" -> "(blonde hair";
 *   4. otherwise (top level) the tag and ", ".
 * Inside `[...]` a `:` or `|` in the tag is escaped (escapeForGroup).
 */
export function planCompletion(text, token, inserted) {
  const start = token.start;
  let end = token.end;
  const after = text.slice(end);
  const groups = openGroups(text, start);
  let insert = escapeForGroup(inserted, groups);
  const comma = after.match(/^[ \t]*,[ \t]*/);
  if (comma) {
    end += comma[0].length; // an existing comma is reused: "tag ,  next" becomes "tag, next"
    insert += ", ";
  } else if (/^[ \t]*[)\]}>:|]/.test(after) || groups) {
    // inside (tag:1.2), [a:b], [a|b] or a group still open: the tag only
  } else {
    const space = after.match(/^[ \t]*/)[0];
    end += space.length;
    insert += ", ";
  }
  return { start, end, insert, caret: start + insert.length };
}

/** 6008644 -> "6.0M", 15300 -> "15k". */
/** The popup's footer while the semantic index does not cover every tag yet (the route's
 * ``index: {embedded, total, building}``), or null. */
export function indexNote(index) {
  if (!index || !(index.total > 0) || !(index.embedded < index.total)) return null;
  const n = Number(index.embedded).toLocaleString("en-US");
  const m = Number(index.total).toLocaleString("en-US");
  return index.building
    ? `search by meaning: ${n} of ${m} tags indexed so far (building)`
    : `search by meaning covers ${n} of ${m} tags: \`tagloom index build\` adds the rest`;
}

export function formatCount(n) {
  n = Number(n) || 0;
  if (n >= 1e6) return (n / 1e6).toFixed(n >= 1e7 ? 0 : 1) + "M";
  if (n >= 1e3) return (n / 1e3).toFixed(n >= 1e4 ? 0 : 1) + "k";
  return String(n);
}

export function categoryName(category) {
  if (typeof category === "number") return CATEGORY_BY_ID[category] || "unknown";
  return CATEGORY_COLORS[category] ? category : "unknown";
}

const MIRROR_PROPS = [
  "direction", "boxSizing", "width", "borderTopWidth", "borderRightWidth", "borderBottomWidth",
  "borderLeftWidth", "borderStyle", "paddingTop", "paddingRight", "paddingBottom", "paddingLeft",
  "fontStyle", "fontVariant", "fontWeight", "fontStretch", "fontSize", "fontSizeAdjust", "lineHeight",
  "fontFamily", "textAlign", "textTransform", "textIndent", "textDecoration", "letterSpacing",
  "wordSpacing", "tabSize", "whiteSpace", "wordWrap", "wordBreak", "overflowWrap",
];

/**
 * Caret position inside a textarea, in the element's own (untransformed) pixels from its border
 * box: {left, top, height}. A hidden copy of the textarea lays the text out the same way.
 */
export function caretCoordinates(el, position) {
  const doc = el.ownerDocument;
  const cs = doc.defaultView.getComputedStyle(el);
  const div = doc.createElement("div");
  const st = div.style;
  for (const p of MIRROR_PROPS) st[p] = cs[p];
  st.position = "absolute";
  st.visibility = "hidden";
  st.left = "-9999px";
  st.top = "0";
  st.height = "auto";
  st.whiteSpace = "pre-wrap";
  st.overflowWrap = "break-word";
  st.overflowY = el.scrollHeight > el.clientHeight ? "scroll" : "hidden";
  div.textContent = el.value.slice(0, position);
  const span = doc.createElement("span");
  span.textContent = el.value.slice(position) || ".";
  div.appendChild(span);
  doc.body.appendChild(div);
  const lineHeight = parseFloat(cs.lineHeight) || parseFloat(cs.fontSize) * 1.25 || 16;
  const out = {
    left: span.offsetLeft + (parseFloat(cs.borderLeftWidth) || 0),
    top: span.offsetTop + (parseFloat(cs.borderTopWidth) || 0),
    height: lineHeight,
  };
  div.remove();
  return out;
}

const STYLE_ID = "tagloom-autocomplete-style";
const CSS = `
.tagloom-ac { position: fixed; z-index: 100000; min-width: 220px; max-width: 460px; max-height: 320px;
  overflow-y: auto; background: #1f2128; color: #e8e8e8; border: 1px solid #4a4d57; border-radius: 6px;
  box-shadow: 0 6px 20px rgba(0,0,0,.45); font: 13px/1.35 system-ui, sans-serif; padding: 3px 0; }
.tagloom-ac[hidden] { display: none; }
.tagloom-ac-item { display: flex; align-items: center; gap: 6px; padding: 3px 10px; cursor: pointer; white-space: nowrap; }
.tagloom-ac-item.tagloom-ac-active { background: #3a4a6b; }
.tagloom-ac-dot { flex: none; width: 8px; height: 8px; border-radius: 50%; }
.tagloom-ac-tag { overflow: hidden; text-overflow: ellipsis; }
.tagloom-ac-alias { color: #a0a4ad; font-size: 12px; overflow: hidden; text-overflow: ellipsis; }
.tagloom-ac-reason { color: #c9b37e; font-size: 11px; }
.tagloom-ac-count { margin-left: auto; padding-left: 12px; color: #a0a4ad; font-size: 12px; font-variant-numeric: tabular-nums; }
.tagloom-ac-note { padding: 3px 10px; color: #c9b37e; font-size: 11px; white-space: normal; border-top: 1px solid #3a3d46; }
`;
// on <html> while our popup is open over another autocomplete (conflict setting "tagloom")
const SILENCE_CLASS = "tagloom-ac-silence-others";

/**
 * The autocomplete controller. One per page; `attach(textarea)` may be called any number of times.
 *   fetchSuggestions(query, {limit, semantic, signal}) -> Promise<{suggestions: [...], warning?}>
 *   getSettings() -> partial DEFAULT_SETTINGS (read on every keystroke, so changes apply at once)
 *   others: other autocompletes to detect and keep from opening at the same time (TAGCOMPLETE)
 *
 * Outdated answers: every keystroke invalidates the lookups in flight (a sequence number), an
 * answer is shown only when the word at the caret is still the one it was asked for, and rows on
 * screen are removed the moment the word changes; Tab/Enter/arrows act only on rows for the word
 * at the caret (otherwise they are the host's). `popup.dataset.query` holds the word shown.
 */
export class TagAutocomplete {
  constructor({ fetchSuggestions, getSettings = () => ({}), document: doc = globalThis.document, others = [TAGCOMPLETE] } = {}) {
    this.fetchSuggestions = fetchSuggestions;
    this.getSettings = getSettings;
    this.doc = doc;
    this.others = others;
    this.silenced = null; // the other autocomplete hidden under our open popup
    this.word = null; // {start, query} of the whole word the rows on screen are for
    this.attached = new WeakSet();
    this.popup = null;
    this.items = [];
    this.active = 0;
    this.target = null;
    this.token = null;
    this.timer = null;
    this.seq = 0;
    this.abort = null;
    this.cache = new Map();
    this.warned = new Set();
    this.suppressInput = false;
    this.warmed = false;
    this.tail = -1;
  }

  settings() {
    let s = {};
    try {
      s = this.getSettings() || {};
    } catch (e) {
      s = {};
    }
    const out = { ...DEFAULT_SETTINGS };
    for (const [k, v] of Object.entries(s)) if (v !== undefined && v !== null) out[k] = v;
    out.maxResults = Math.max(1, Math.min(50, parseInt(out.maxResults, 10) || DEFAULT_SETTINGS.maxResults));
    return out;
  }

  attach(ta) {
    if (!ta || this.attached.has(ta)) return false;
    this.attached.add(ta);
    if (!this.warmed) {
      // the server loads its tag index on the first query (a second or two for 140k tags): start
      // that when the user first enters a prompt box, not when they type the first letter
      this.warmed = true;
      Promise.resolve()
        .then(() => this.fetchSuggestions("a", { limit: 1, semantic: false, signal: undefined }))
        .catch(() => {});
    }
    ta.addEventListener("input", (e) => !e.isComposing && this.onInput(ta));
    ta.addEventListener("compositionend", () => this.onInput(ta)); // IME input (中文, 日本語) is done
    // while an IME composes, the word changes without input events we act on: no rows for the old one
    ta.addEventListener("compositionstart", () => this.target === ta && this.hide());
    // capture, so that Tab/Enter/Escape are ours before the host's own key handlers see them
    ta.addEventListener("keydown", (e) => this.onKeyDown(ta, e), true);
    ta.addEventListener("blur", () => setTimeout(() => this.target === ta && this.doc.activeElement !== ta && this.hide(), 150));
    ta.addEventListener("mousedown", () => this.target === ta && this.hide());
    ta.addEventListener("scroll", () => this.target === ta && this.hide());
    ta.dataset.tagloomAutocomplete = "1";
    return true;
  }

  onInput(ta) {
    if (this.suppressInput) return;
    const s = this.settings();
    clearTimeout(this.timer);
    this.seq++; // whatever is in flight was asked for an older text
    if (!s.enabled || ta.selectionStart !== ta.selectionEnd) return this.hide();
    const token = currentToken(ta.value, ta.selectionStart);
    if (!token || token.query.length < s.minChars) return this.hide();
    // rows for "blue" must not stay on screen (or be accepted) while "blue ey" is typed
    // (the other autocomplete stays hidden until this word's answer: no flicker between the two)
    if (this.visible() && !this.isCurrent(ta)) this.hide(true);
    if (this.otherWins(s)) return this.hide();
    this.timer = setTimeout(() => this.lookup(ta, token, s), s.debounceMs);
  }

  /** True when the rows on screen were asked for the word now at `ta`'s caret. */
  isCurrent(ta) {
    if (!this.word || this.target !== ta || ta.selectionStart !== ta.selectionEnd) return false;
    const now = currentToken(ta.value, ta.selectionStart);
    return !!now && now.start === this.word.start && now.query === this.word.query;
  }

  /** The conflict setting says the other autocomplete wins, and one is installed and active. */
  otherWins(s) {
    return s.conflict === "other" && !!detectOther(this.doc, this.others);
  }

  async fetchCached(query, s, seq) {
    const key = `${s.semantic ? 1 : 0}|${s.maxResults}|${query}`;
    let answer = this.cache.get(key);
    if (answer) return answer;
    if (this.abort) this.abort.abort();
    const abort = (this.abort = typeof AbortController === "function" ? new AbortController() : null);
    answer = await this.fetchSuggestions(query, { limit: s.maxResults, semantic: s.semantic, signal: abort && abort.signal });
    if (!answer || !Array.isArray(answer.suggestions)) throw new Error("bad answer");
    this.cache.set(key, answer);
    if (this.cache.size > 200) this.cache.delete(this.cache.keys().next().value);
    return answer;
  }

  async lookup(ta, token, s) {
    const seq = ++this.seq;
    let answer;
    let tail = -1; // which of token.tails answered (-1: the whole word)
    try {
      answer = await this.fetchCached(token.query, s, seq);
      while (!answer.suggestions.length && tail + 1 < token.tails.length && seq === this.seq) {
        tail++;
        answer = await this.fetchCached(token.tails[tail].query, s, seq);
      }
    } catch (e) {
      if (seq === this.seq) this.hide();
      return; // a dead or slow server must never get in the way of typing
    }
    if (seq !== this.seq) return; // typing moved on: a newer lookup is coming
    const now = this.doc.activeElement === ta ? currentToken(ta.value, ta.selectionStart) : null;
    if (!now || now.query !== token.query || now.start !== token.start) return this.hide();
    if (this.otherWins(this.settings())) return this.hide();
    this.tail = tail;
    this.show(ta, withTail(now, tail), answer.suggestions.slice(0, s.maxResults), answer.warning, s, now, answer.index);
  }

  ensurePopup() {
    if (this.popup && this.popup.isConnected) return this.popup;
    const doc = this.doc;
    if (!doc.getElementById(STYLE_ID)) {
      const style = doc.createElement("style");
      style.id = STYLE_ID;
      // while ours is open, the other autocomplete's popup is not displayed, whatever it does
      const silence = this.others
        .flatMap((o) => (o.selector ? o.selector.split(",") : []))
        .map((sel) => `html.${SILENCE_CLASS} ${sel.trim()}`);
      style.textContent = CSS + (silence.length ? `${silence.join(", ")} { display: none !important; }\n` : "");
      doc.head.appendChild(style);
    }
    const popup = doc.createElement("div");
    popup.className = "tagloom-ac";
    popup.hidden = true;
    popup.setAttribute("role", "listbox");
    // Keep the focus (and the caret) in the textarea when the popup is clicked, and keep the
    // click from the host: ComfyUI's page-level pointer handlers take the focus away otherwise.
    // (preventDefault on mousedown keeps the focus; on pointerdown it would suppress mousedown)
    for (const type of ["pointerdown", "pointerup", "mouseup", "click"]) {
      popup.addEventListener(type, (e) => e.stopPropagation());
    }
    popup.addEventListener("mousedown", (e) => {
      e.preventDefault();
      e.stopPropagation();
      const item = e.target.closest(".tagloom-ac-item");
      const ta = this.target;
      if (!item || !ta) return;
      this.accept(Number(item.dataset.index));
      // and should a host still move the focus after the click, give it back
      setTimeout(() => this.doc.activeElement !== ta && ta.isConnected && ta.focus(), 0);
    });
    popup.addEventListener("mousemove", (e) => {
      const item = e.target.closest(".tagloom-ac-item");
      if (item) this.select(Number(item.dataset.index), false);
    });
    doc.body.appendChild(popup);
    // the popup is fixed to the viewport: when the canvas or page moves under it, close it
    const view = doc.defaultView;
    const away = (e) => this.visible() && !popup.contains(e.target) && this.hide();
    view.addEventListener("wheel", away, { capture: true, passive: true });
    view.addEventListener("resize", () => this.hide());
    this.popup = popup;
    return popup;
  }

  show(ta, token, suggestions, warning, s, word = token, index = null) {
    const note = warning && !this.warned.has(warning) ? warning : null;
    if (!suggestions.length && !note) return this.hide();
    if (note) this.warned.add(warning);
    const doc = this.doc;
    const popup = this.ensurePopup();
    popup.replaceChildren();
    this.items = suggestions;
    this.target = ta;
    this.token = token;
    this.word = { start: word.start, query: word.query };
    popup.dataset.query = word.query;
    const other = detectOther(doc, this.others);
    if (other) {
      // conflict "tagloom" (otherWins() stopped us otherwise): one popup on screen, ours
      this.silenced = other;
      doc.documentElement.classList.add(SILENCE_CLASS);
    }
    suggestions.forEach((sug, i) => {
      const cat = categoryName(sug.category);
      const color = CATEGORY_COLORS[cat];
      const row = doc.createElement("div");
      row.className = "tagloom-ac-item";
      row.dataset.index = String(i);
      row.dataset.category = cat;
      row.setAttribute("role", "option");
      row.title = `${sug.tag} (${cat}, ${Number(sug.post_count || 0).toLocaleString()} posts)`;
      const dot = doc.createElement("span");
      dot.className = "tagloom-ac-dot";
      dot.style.background = color;
      const name = doc.createElement("span");
      name.className = "tagloom-ac-tag";
      name.style.color = color;
      name.textContent = formatTag(sug.tag, { ...s, escapeParentheses: false });
      row.append(dot, name);
      if (sug.alias) {
        const alias = doc.createElement("span");
        alias.className = "tagloom-ac-alias";
        alias.textContent = `\u2190 ${sug.alias}`;
        row.append(alias);
      }
      if (sug.reason === "semantic" || sug.reason === "fuzzy") {
        const reason = doc.createElement("span");
        reason.className = "tagloom-ac-reason";
        reason.textContent = sug.reason === "semantic" ? "\u2248 meaning" : "~ typo";
        row.append(reason);
      }
      const count = doc.createElement("span");
      count.className = "tagloom-ac-count";
      count.textContent = formatCount(sug.post_count);
      row.append(count);
      popup.append(row);
    });
    for (const [text, cls] of [[note, "tagloom-ac-note"], [indexNote(index), "tagloom-ac-note tagloom-ac-progress"]]) {
      if (!text) continue;
      const div = doc.createElement("div");
      div.className = cls;
      div.textContent = text;
      popup.append(div);
    }
    popup.hidden = false;
    this.select(0, false);
    this.place(ta, token);
  }

  place(ta, token) {
    const popup = this.popup;
    const rect = ta.getBoundingClientRect();
    const scale = ta.offsetWidth ? rect.width / ta.offsetWidth : 1; // ComfyUI zooms its widgets
    const c = caretCoordinates(ta, token.start);
    let left = rect.left + (c.left - ta.scrollLeft) * scale;
    let top = rect.top + (c.top - ta.scrollTop + c.height) * scale + 2;
    const view = this.doc.defaultView;
    const w = popup.offsetWidth;
    const h = popup.offsetHeight;
    if (left + w > view.innerWidth - 4) left = Math.max(4, view.innerWidth - w - 4);
    if (top + h > view.innerHeight - 4) top = Math.max(4, rect.top + (c.top - ta.scrollTop) * scale - h - 2);
    popup.style.left = `${Math.round(left)}px`;
    popup.style.top = `${Math.round(top)}px`;
  }

  visible() {
    return !!(this.popup && !this.popup.hidden && this.items.length);
  }

  select(i, scroll = true) {
    if (!this.popup) return;
    const rows = this.popup.querySelectorAll(".tagloom-ac-item");
    if (!rows.length) return;
    this.active = (i + rows.length) % rows.length;
    rows.forEach((r, j) => {
      r.classList.toggle("tagloom-ac-active", j === this.active);
      r.setAttribute("aria-selected", j === this.active ? "true" : "false");
    });
    if (scroll) rows[this.active].scrollIntoView({ block: "nearest" });
  }

  /** Close the popup. keepSilence: the other autocomplete stays hidden (a new lookup follows). */
  hide(keepSilence = false) {
    clearTimeout(this.timer);
    this.seq++; // answers still in flight are stale now
    if (this.popup) {
      this.popup.hidden = true;
      delete this.popup.dataset.query;
    }
    this.items = [];
    this.target = null;
    this.word = null;
    if (this.silenced && !keepSilence) {
      // the other popup stays closed (and out of the keys) until the user types again
      const other = this.silenced;
      this.silenced = null;
      if (other.container) this.doc.querySelectorAll(other.container).forEach((el) => (el.style.display = "none"));
      this.doc.documentElement.classList.remove(SILENCE_CLASS);
    }
  }

  onKeyDown(ta, e) {
    if (this.target !== ta || !this.visible() || e.isComposing) return;
    if (!this.isCurrent(ta)) {
      // rows for another word (the caret moved, the text changed under us): not ours to act on
      this.hide();
      return;
    }
    const plain = !e.ctrlKey && !e.metaKey && !e.altKey;
    let handled = true;
    if (e.key === "ArrowDown" && plain) this.select(this.active + 1);
    else if (e.key === "ArrowUp" && plain) this.select(this.active - 1);
    else if ((e.key === "Tab" || e.key === "Enter") && plain && !e.shiftKey) this.accept(this.active);
    else if (e.key === "Escape") this.hide();
    else {
      handled = false;
      if (["ArrowLeft", "ArrowRight", "Home", "End", "PageUp", "PageDown"].includes(e.key)) this.hide();
    }
    if (handled) {
      e.preventDefault();
      e.stopPropagation();
      e.stopImmediatePropagation();
    }
  }

  accept(index) {
    const ta = this.target;
    const sug = this.items[index];
    if (!ta || !sug || !this.isCurrent(ta)) return this.hide(); // never a row for an older word
    const s = this.settings();
    // the text may have changed since the popup opened: recompute the word at the caret
    const now = currentToken(ta.value, ta.selectionStart);
    // a row that completes only the last words of the phrase (the server's `span`) replaces just those
    const spanned = sug.span && now ? now.tails.findIndex((t) => t.query === sug.span) : -1;
    const token = now ? withTail(now, spanned >= 0 ? spanned : this.tail) : this.token;
    const plan = planCompletion(ta.value, token, formatTag(sug.tag, s));
    this.hide();
    replaceText(ta, plan, () => {
      this.suppressInput = true;
    }, () => {
      this.suppressInput = false;
    });
  }
}

function withTail(token, tail) {
  if (tail == null || tail < 0 || !token.tails[tail]) return token;
  return { ...token, start: token.tails[tail].start, query: token.tails[tail].query };
}

/**
 * Replace plan.start..plan.end with plan.insert and put the caret at plan.caret. execCommand
 * keeps the browser's undo history (Ctrl+Z undoes a completion) and fires the `input` event the
 * hosts listen to (ComfyUI's widget value, gradio's state); setRangeText is the fallback.
 */
export function replaceText(ta, plan, before = () => {}, after = () => {}) {
  const doc = ta.ownerDocument;
  before();
  try {
    ta.focus();
    ta.setSelectionRange(plan.start, plan.end);
    let done = false;
    try {
      done = doc.execCommand && doc.execCommand("insertText", false, plan.insert);
    } catch (e) {
      done = false;
    }
    if (!done || ta.value.slice(plan.start, plan.start + plan.insert.length) !== plan.insert) {
      ta.setRangeText(plan.insert, plan.start, plan.end, "end");
      ta.dispatchEvent(new Event("input", { bubbles: true }));
    }
    ta.setSelectionRange(plan.caret, plan.caret);
  } finally {
    after();
  }
}
