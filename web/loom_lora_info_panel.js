// LoRA Loom: the LoRA info panel, one for the page. Hover or click an (i) (stack rows) or the "LoRA info" line of
// Loom LoRA Loader / Loom LoRA Info (loom_lora_info.js), and it shows what the file is (loom_lora_info_render.js).
// Hover shows it while the pointer is on the (i) or the panel; a click pins it until Escape, the close button or a
// click elsewhere.
import { api } from "../../scripts/api.js";
import { addStyle, el } from "./loom_dom.js";
import { renderInfo } from "./loom_lora_info_render.js";

const CACHE_MS = 15000; // a file may be replaced: ask again after this
export const HOVER_DELAY_MS = 300;
const HIDE_DELAY_MS = 250;

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
