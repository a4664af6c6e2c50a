// LoRA Loom: the LoRA info panel. Hover or click an (i) (stack rows, loom_stack_editor.js) or the "LoRA info" line of
// Loom LoRA Loader / Loom LoRA Info, and a panel shows what the file is: format, base model, rank/alpha, modules, who
// wrote it, trigger words, the header metadata in the sections Loom LoRA Info shows (about, training, adapter config,
// other keys) and the raw header, from GET /loom/lora_info (nodes/web_routes.py). Metadata is data from arbitrary
// files: the panel is built with createElement + textContent only, never innerHTML, so markup in a file shows as text.
// Hover shows it while the pointer is on the (i) or the panel; a click pins it until Escape, the close button or a
// click elsewhere. The canvas widget on the loaders is not serialised.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const CACHE_MS = 15000; // a file may be replaced: ask again after this
const HOVER_DELAY_MS = 300;
const HIDE_DELAY_MS = 250;
const LOADER_NODES = new Set(["LoomLoraLoader", "LoomLoraInfo"]);

const STYLE = `
.loom-info { position: fixed; z-index: 10000; width: 380px; max-width: calc(100vw - 16px); max-height: 70vh;
  overflow: auto; box-sizing: border-box; padding: 8px 10px; border-radius: 6px; font: 12px/1.4 sans-serif;
  background: var(--comfy-menu-bg, #202020); color: var(--fg-color, #ddd); border: 1px solid var(--border-color, #4e4e4e);
  box-shadow: 0 6px 24px rgba(0, 0, 0, 0.5); }
.loom-info[hidden] { display: none; }
.loom-info-head { display: flex; align-items: flex-start; gap: 6px; margin-bottom: 6px; }
.loom-info-title { flex: 1; font-weight: bold; overflow-wrap: anywhere; }
.loom-info-pin { font-size: 10px; opacity: 0.6; white-space: nowrap; }
.loom-info-close { border: none; background: none; color: inherit; cursor: pointer; font-size: 14px; padding: 0 2px; }
.loom-info dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 10px; margin: 0 0 6px; }
.loom-info dt { opacity: 0.65; }
.loom-info dd { margin: 0; overflow-wrap: anywhere; white-space: pre-wrap; }
.loom-info-section { margin: 8px 0 4px; font-weight: bold; opacity: 0.85; }
.loom-info-rows dd { max-height: 8em; overflow: auto; }
.loom-info-meta dd { font-family: monospace; font-size: 11px; max-height: 8em; overflow: auto; }
.loom-info-meta dt { font-family: monospace; font-size: 11px; }
.loom-info-word { display: inline-block; margin: 0 4px 2px 0; padding: 0 5px; border-radius: 3px; cursor: copy;
  background: var(--comfy-input-bg, #333); }
.loom-info-note { opacity: 0.65; font-style: italic; }
.loom-info-error { color: #ff8a80; overflow-wrap: anywhere; }
details.loom-info-details > summary { cursor: pointer; margin: 8px 0 4px; font-weight: bold; opacity: 0.85; }
`;

export function addStyle(id, css) {
  if (document.getElementById(id)) return;
  const style = document.createElement("style");
  style.id = id;
  style.textContent = css;
  document.head.appendChild(style);
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

// --- data ----------------------------------------------------------------------------------------------------------

const cache = new Map(); // name -> {time, promise}

/** The route's JSON for a LoRA name; rejects with an Error whose message is the server's `error` text. */
export function fetchLoraInfo(name, { fresh = false } = {}) {
  const hit = cache.get(name);
  if (!fresh && hit && Date.now() - hit.time < CACHE_MS) return hit.promise;
  const promise = (async () => {
    const response = await api.fetchApi(`/loom/lora_info?name=${encodeURIComponent(name)}`);
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) throw new Error(body?.error ?? `LoRA info: HTTP ${response.status}`);
    return body;
  })();
  cache.set(name, { time: Date.now(), promise });
  promise.catch(() => cache.delete(name));
  return promise;
}

function formatValue(value) {
  if (value === null || value === undefined) return "n/a";
  if (Array.isArray(value)) return value.join(", ");
  return String(value);
}

function formatBytes(bytes) {
  if (!Number.isFinite(bytes)) return "n/a";
  const units = ["B", "KiB", "MiB", "GiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) [value, unit] = [value / 1024, unit + 1];
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}

function definitionList(pairs, className) {
  const dl = el("dl", className);
  for (const [label, value, testid] of pairs) {
    const dd = el("dd");
    if (value instanceof Node) dd.appendChild(value);
    else dd.textContent = String(value ?? "n/a");
    if (testid) dd.dataset.testid = testid;
    dl.append(el("dt", null, label), dd);
  }
  return dl;
}

/** The header view's sections (the same rows Loom LoRA Info and `inspect` show), each a heading and a list. */
function renderSections(header) {
  const body = document.createDocumentFragment();
  for (const section of header?.sections ?? []) {
    const heading = el("div", "loom-info-section", section.title);
    heading.dataset.testid = "loom-lora-info-section";
    const list = definitionList(section.rows.map((row) => [row.label, row.value]), "loom-info-rows");
    list.dataset.section = section.title;
    // which header keys a row comes from, on hover: the labels are readable names, the keys are what tools grep for
    list.querySelectorAll("dt").forEach((dt, i) => (dt.title = section.rows[i].keys.join(", ")));
    body.append(heading, list);
  }
  if (header?.truncated?.length) {
    body.appendChild(el("div", "loom-info-note", `cut to 4000 characters: ${header.truncated.join(", ")}`));
  }
  return body;
}

/** The panel body for a route answer (DOM nodes, text only). */
export function renderInfo(info) {
  const body = document.createDocumentFragment();
  const words = el("span");
  if (info.trigger_words?.length) {
    for (const word of info.trigger_words) {
      const chip = el("span", "loom-info-word", word);
      chip.title = "click to copy";
      chip.dataset.testid = "loom-lora-info-word";
      chip.addEventListener("click", (event) => {
        event.stopPropagation();
        navigator.clipboard?.writeText(word).catch(() => {});
      });
      words.appendChild(chip);
    }
  } else {
    words.appendChild(el("span", "loom-info-note", "none found"));
  }
  const summary = [
    ["format", info.format, "loom-lora-info-format"],
    ["base model", info.base_model, "loom-lora-info-base"],
    ["rank / alpha", info.rank_alpha ?? `${formatValue(info.rank)} / ${formatValue(info.alpha)}`, "loom-lora-info-rank"],
    ["modules", info.ignored_keys ? `${info.modules} (${info.ignored_keys} keys ignored)` : info.modules],
    ["file size", formatBytes(info.file_size)],
  ];
  if (info.header?.writer) summary.push(["written by", info.header.writer, "loom-lora-info-writer"]);
  summary.push(["trigger words", words, "loom-lora-info-words"]);
  body.appendChild(definitionList(summary));
  body.appendChild(renderSections(info.header));
  const keys = Object.keys(info.metadata ?? {});
  const details = el("details", "loom-info-details");
  details.dataset.testid = "loom-lora-info-metadata";
  details.appendChild(el("summary", null, keys.length ? `raw header (${keys.length} keys)` : "raw header (none)"));
  if (keys.length) {
    details.appendChild(definitionList(keys.map((key) => [key, info.metadata[key]]), "loom-info-meta"));
    if (info.metadata_truncated?.length) {
      details.appendChild(el("div", "loom-info-note", `cut to 4000 characters: ${info.metadata_truncated.join(", ")}`));
    }
  }
  body.appendChild(details);
  return body;
}

// --- the panel -----------------------------------------------------------------------------------------------------

class InfoPanel {
  constructor() {
    this.root = null;
    this.name = null;
    this.anchor = null; // the element (or point) it is placed at
    this.owner = null; // what opened it: the anchor element, or a node for canvas hovers
    this.pinned = false;
    this.token = 0;
    this.hideTimer = null;
    this.showTimer = null;
  }

  build() {
    if (this.root) return;
    addStyle("loom-lora-info-style", STYLE);
    const root = el("div", "loom-info");
    root.dataset.testid = "loom-lora-info";
    root.setAttribute("role", "dialog");
    root.hidden = true;
    const head = el("div", "loom-info-head");
    this.title = el("span", "loom-info-title");
    this.title.dataset.testid = "loom-lora-info-title";
    this.pinNote = el("span", "loom-info-pin", "pinned");
    const close = el("button", "loom-info-close", "\u00d7");
    close.title = "close (Esc)";
    close.dataset.testid = "loom-lora-info-close";
    close.addEventListener("click", () => this.hide());
    head.append(this.title, this.pinNote, close);
    this.body = el("div", "loom-info-body");
    this.body.dataset.testid = "loom-lora-info-body";
    root.append(head, this.body);
    root.addEventListener("pointerenter", () => this.cancelHide());
    root.addEventListener("pointerleave", () => this.pinned || this.hideSoon());
    root.addEventListener("pointerdown", () => this.pin()); // interacting with it keeps it open
    root.addEventListener("wheel", (event) => event.stopPropagation(), { passive: true });
    document.body.appendChild(root);
    document.addEventListener("keydown", (event) => event.key === "Escape" && !root.hidden && this.hide());
    document.addEventListener(
      "pointerdown",
      (event) => {
        if (root.hidden || root.contains(event.target)) return;
        if (this.anchor instanceof Element && this.anchor.contains(event.target)) return; // the anchor's click toggles
        this.hide();
      },
      true,
    );
    this.root = root;
  }

  get visible() {
    return !!this.root && !this.root.hidden;
  }

  pin() {
    this.pinned = true;
    if (this.pinNote) this.pinNote.hidden = false;
  }

  /** Show the info of `name` next to `anchor` (an Element, or {x, y} in client pixels). */
  show(name, anchor, { pinned = false, owner = anchor } = {}) {
    this.build();
    this.cancelHide();
    const token = ++this.token;
    this.name = name;
    this.anchor = anchor;
    this.owner = owner;
    this.pinned = pinned;
    this.pinNote.hidden = !pinned;
    this.title.textContent = name || "(no LoRA picked)";
    this.root.dataset.name = name ?? "";
    this.root.dataset.state = "loading";
    this.body.replaceChildren(el("div", "loom-info-note", name ? "reading the file\u2026" : "pick a LoRA first"));
    this.root.hidden = false;
    this.place();
    if (!name) {
      this.root.dataset.state = "empty";
      return Promise.resolve(null);
    }
    return fetchLoraInfo(name).then(
      (info) => {
        if (token !== this.token) return info;
        this.body.replaceChildren(renderInfo(info));
        this.root.dataset.state = "ready";
        this.place();
        return info;
      },
      (error) => {
        if (token !== this.token) return null;
        this.body.replaceChildren(el("div", "loom-info-error", error.message));
        this.root.dataset.state = "error";
        this.place();
        return null;
      },
    );
  }

  place() {
    const root = this.root;
    const margin = 8;
    let x;
    let y;
    if (this.anchor instanceof Element) {
      const rect = this.anchor.getBoundingClientRect();
      x = rect.right + 6;
      y = rect.top;
      if (x + root.offsetWidth > window.innerWidth - margin) x = rect.left - root.offsetWidth - 6;
    } else {
      x = (this.anchor?.x ?? window.innerWidth / 2) + 12;
      y = (this.anchor?.y ?? window.innerHeight / 3) + 4;
      if (x + root.offsetWidth > window.innerWidth - margin) x = (this.anchor?.x ?? 0) - root.offsetWidth - 12;
    }
    x = Math.max(margin, Math.min(x, window.innerWidth - root.offsetWidth - margin));
    y = Math.max(margin, Math.min(y, window.innerHeight - root.offsetHeight - margin));
    root.style.left = `${Math.round(x)}px`;
    root.style.top = `${Math.round(y)}px`;
  }

  hide() {
    this.cancelHide();
    clearTimeout(this.showTimer);
    this.token++;
    this.pinned = false;
    this.anchor = null;
    this.owner = null;
    if (this.root) this.root.hidden = true;
  }

  hideSoon() {
    this.cancelHide();
    this.hideTimer = setTimeout(() => this.hide(), HIDE_DELAY_MS);
  }

  cancelHide() {
    clearTimeout(this.hideTimer);
    this.hideTimer = null;
  }
}

export const infoPanel = new InfoPanel();

/** Show the panel for a LoRA (returns a promise of the info, or null on an error). */
export function showLoraInfo(name, anchor, options) {
  return infoPanel.show(name, anchor, options);
}

export function hideLoraInfo() {
  infoPanel.hide();
}

/** Hover on `element` shows the info of getName() (unpinned); a click pins it, a second click closes it. */
export function attachLoraInfo(element, getName) {
  element.addEventListener("pointerenter", () => {
    if (infoPanel.visible && infoPanel.pinned) return;
    clearTimeout(infoPanel.showTimer);
    infoPanel.showTimer = setTimeout(() => infoPanel.show(getName(), element), HOVER_DELAY_MS);
  });
  element.addEventListener("pointerleave", () => {
    clearTimeout(infoPanel.showTimer);
    if (infoPanel.visible && !infoPanel.pinned && infoPanel.owner === element) infoPanel.hideSoon();
  });
  element.addEventListener("click", (event) => {
    event.stopPropagation();
    clearTimeout(infoPanel.showTimer);
    if (infoPanel.visible && infoPanel.pinned && infoPanel.owner === element) infoPanel.hide();
    else infoPanel.show(getName(), element, { pinned: true });
  });
}

// --- Loom LoRA Loader / Loom LoRA Info: a "LoRA info" line under the widgets ---------------------------------------

const INFO_WIDGET_HEIGHT = 22;

/** The canvas pointer's last position in client pixels (for panels opened from a menu). */
function pointerPosition() {
  const canvas = app.canvas;
  const rect = canvas?.canvas?.getBoundingClientRect?.();
  const mouse = canvas?.mouse ?? canvas?.last_mouse;
  return rect && mouse ? { x: rect.left + mouse[0], y: rect.top + mouse[1] } : null;
}

function addInfoWidget(node) {
  const loraName = () => node.widgets?.find((w) => w.name === "lora_name")?.value ?? "";
  const widget = {
    name: "loom_lora_info",
    type: "loom_lora_info",
    value: "",
    serialize: false, // not in widgets_values
    options: { serialize: false }, // not in the API prompt
    computeSize: (width) => [width, INFO_WIDGET_HEIGHT],
    draw(ctx, drawNode, width, y) {
      const margin = 15;
      const h = INFO_WIDGET_HEIGHT - 4;
      ctx.save();
      ctx.fillStyle = "#171b22";
      ctx.strokeStyle = "#34404f";
      ctx.beginPath();
      ctx.roundRect ? ctx.roundRect(margin, y + 2, width - 2 * margin, h, 8) : ctx.rect(margin, y + 2, width - 2 * margin, h);
      ctx.fill();
      ctx.stroke();
      const label = "LoRA info";
      ctx.font = "11px sans-serif";
      const cy = y + 2 + h / 2;
      const cx = width / 2 - ctx.measureText(label).width / 2 - 6; // an (i) drawn, not a glyph fonts may lack
      ctx.strokeStyle = "#c8d0da";
      ctx.beginPath();
      ctx.arc(cx, cy, 6, 0, 2 * Math.PI);
      ctx.stroke();
      ctx.fillStyle = "#c8d0da";
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.font = "bold italic 9px serif";
      ctx.fillText("i", cx, cy + 0.5);
      ctx.font = "11px sans-serif";
      ctx.textAlign = "left";
      ctx.fillText(label, cx + 10, cy, width - 2 * margin - 30);
      ctx.restore();
    },
    mouse(event, pos) {
      if (event.type === "pointerdown" || event.type === "mousedown") {
        clearTimeout(infoPanel.showTimer);
        infoPanel.show(loraName(), { x: event.clientX, y: event.clientY }, { pinned: true, owner: node });
        return true;
      }
      return false;
    },
  };
  node.addCustomWidget(widget); // last, so the other widgets keep their widgets_values indices
  node.loomShowLoraInfo = (anchor) => infoPanel.show(loraName(), anchor ?? pointerPosition(), { pinned: true, owner: node });
  node.loomHoverLoraInfo = (over, point) => {
    if (infoPanel.visible && infoPanel.pinned) return; // a pinned panel stays as it is
    if (over) {
      if (infoPanel.visible && infoPanel.owner === node) return infoPanel.cancelHide();
      clearTimeout(infoPanel.showTimer);
      infoPanel.showTimer = setTimeout(() => infoPanel.show(loraName(), point, { owner: node }), HOVER_DELAY_MS);
    } else {
      clearTimeout(infoPanel.showTimer);
      if (infoPanel.visible && infoPanel.owner === node) infoPanel.hideSoon();
    }
  };
  return widget;
}

app.registerExtension({
  name: "lora_loom.loraInfo",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!LOADER_NODES.has(nodeData?.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      addInfoWidget(this);
      const [width, height] = this.computeSize();
      this.setSize([Math.max(width, this.size?.[0] ?? 0), Math.max(height, this.size?.[1] ?? 0)]);
      return result;
    };
    const getExtraMenuOptions = nodeType.prototype.getExtraMenuOptions;
    nodeType.prototype.getExtraMenuOptions = function (canvas, options) {
      const result = getExtraMenuOptions?.apply(this, arguments);
      options.unshift({ content: "LoRA info", callback: () => this.loomShowLoraInfo?.() }, null);
      return result;
    };
    // Hovering the "LoRA info" line shows the panel at the pointer (LiteGraph calls onMouseMove while hovering).
    const onMouseMove = nodeType.prototype.onMouseMove;
    nodeType.prototype.onMouseMove = function (event) {
      const result = onMouseMove?.apply(this, arguments);
      const widget = this.getWidgetOnPos?.(event.canvasX, event.canvasY, true);
      this.loomHoverLoraInfo?.(widget?.name === "loom_lora_info", { x: event.clientX, y: event.clientY });
      return result;
    };
    const onMouseLeave = nodeType.prototype.onMouseLeave;
    nodeType.prototype.onMouseLeave = function () {
      const result = onMouseLeave?.apply(this, arguments);
      this.loomHoverLoraInfo?.(false);
      return result;
    };
    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      if (infoPanel.visible && infoPanel.owner === this) infoPanel.hide();
      return onRemoved?.apply(this, arguments);
    };
  },
});
