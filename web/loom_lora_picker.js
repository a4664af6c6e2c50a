// LoRA Loom: the stack editor's LoRA picker, one for the page: a search over ComfyUI's `loras` list that matches
// folder words as well as file words, so LoRAs kept in subfolders are quick to find.
import { api } from "../../scripts/api.js";
import { el } from "./loom_dom.js";
import { addStackStyle } from "./loom_stack_style.js";
import { filterNames, splitName } from "./loom_stack_rows.js";

const PICKER_LIMIT = 400; // names listed at once; the filter narrows the rest
const NAMES_MS = 5000; // the loras list is fetched again after this

/** A file name as DOM: the folder part dimmed, then the file (text nodes only). */
export function nameParts(name) {
  const { folder, file } = splitName(name);
  const fragment = document.createDocumentFragment();
  if (folder) fragment.appendChild(el("span", "loom-stack-folder", folder));
  fragment.appendChild(document.createTextNode(file));
  return fragment;
}

// --- the `loras` list ----------------------------------------------------------------------------------------------

let comboNames = []; // from the loader's node definition, until /models/loras answers
let fetchedNames = null;
let fetchedAt = 0;
let fetching = null;

function optionsOf(spec) {
  if (!Array.isArray(spec)) return null;
  if (Array.isArray(spec[0])) return spec[0]; // [["a", "b"], {...}]
  if (spec[0] === "COMBO" && Array.isArray(spec[1]?.options)) return spec[1].options;
  return null;
}

/** Keep a loader node's `lora_name` options: the names the picker shows before /models/loras has answered. */
export function learnComboNames(nodeData) {
  const names = optionsOf(nodeData.input?.required?.lora_name);
  if (names) comboNames = names.map(String);
}

/** The LoRA names ComfyUI lists now (cached a few seconds); `fresh` asks the server again. */
export async function loraNames(fresh = false) {
  if (!fresh && fetchedNames && Date.now() - fetchedAt < NAMES_MS) return fetchedNames;
  fetching ??= (async () => {
    try {
      const response = await api.fetchApi("/models/loras");
      const names = response.ok ? await response.json() : null;
      if (Array.isArray(names)) {
        fetchedNames = names.map(String);
        fetchedAt = Date.now();
      }
    } catch (error) {
      console.warn("[LoRA Loom] could not list the loras folder:", error);
    } finally {
      fetching = null;
    }
    return fetchedNames ?? comboNames;
  })();
  return fetching;
}

// --- the picker (one for the page) ---------------------------------------------------------------------------------

class LoraPicker {
  constructor() {
    this.root = null;
    this.names = [];
    this.shown = [];
    this.active = 0;
    this.onPick = null;
    this.current = null;
    this.anchor = null;
  }

  build() {
    if (this.root) return;
    addStackStyle();
    const root = el("div", "loom-picker");
    root.dataset.testid = "loom-lora-picker";
    root.hidden = true;
    this.filter = el("input", "loom-picker-filter");
    this.filter.type = "search";
    this.filter.placeholder = "search LoRAs: folder or name words";
    this.filter.dataset.testid = "loom-picker-filter";
    this.filter.addEventListener("input", () => this.render());
    this.filter.addEventListener("keydown", (event) => this.key(event));
    this.count = el("div", "loom-picker-count");
    this.count.dataset.testid = "loom-picker-count";
    this.list = el("div", "loom-picker-list");
    this.list.dataset.testid = "loom-picker-list";
    root.append(this.filter, this.count, this.list);
    root.addEventListener("wheel", (event) => event.stopPropagation(), { passive: true });
    document.body.appendChild(root);
    document.addEventListener(
      "pointerdown",
      (event) => {
        if (root.hidden || root.contains(event.target)) return;
        if (this.anchor?.contains?.(event.target)) return;
        this.close();
      },
      true,
    );
    this.root = root;
  }

  get visible() {
    return !!this.root && !this.root.hidden;
  }

  /** Open under `anchor`; `onPick(name)` is called with the chosen name. */
  async open(anchor, { current = null, onPick } = {}) {
    this.build();
    this.anchor = anchor;
    this.current = current;
    this.onPick = onPick;
    this.filter.value = "";
    this.names = fetchedNames ?? comboNames;
    this.root.hidden = false;
    this.render();
    this.place();
    this.filter.focus();
    const names = await loraNames(true);
    if (this.visible && this.anchor === anchor) {
      this.names = names;
      this.render();
    }
    return this;
  }

  close() {
    if (this.root) this.root.hidden = true;
    this.onPick = null;
    this.anchor = null;
  }

  place() {
    const margin = 8;
    const rect = this.anchor?.getBoundingClientRect?.() ?? { left: 100, bottom: 100, top: 100 };
    const { offsetWidth: w, offsetHeight: h } = this.root;
    let x = rect.left;
    let y = rect.bottom + 2;
    if (y + h > window.innerHeight - margin) y = Math.max(margin, rect.top - h - 2);
    x = Math.max(margin, Math.min(x, window.innerWidth - w - margin));
    this.root.style.left = `${Math.round(x)}px`;
    this.root.style.top = `${Math.round(y)}px`;
  }

  render() {
    const matches = filterNames(this.names, this.filter.value);
    this.shown = matches.slice(0, PICKER_LIMIT);
    const current = this.shown.indexOf(this.current);
    this.active = current >= 0 && !this.filter.value ? current : 0;
    this.list.replaceChildren();
    this.shown.forEach((name, i) => {
      const item = el("div", "loom-picker-item");
      item.dataset.testid = "loom-picker-item";
      item.dataset.name = name;
      item.title = name;
      if (name === this.current) item.classList.add("loom-current");
      item.appendChild(nameParts(name));
      item.addEventListener("pointerdown", (event) => event.preventDefault()); // keep the filter focused
      item.addEventListener("click", () => this.pick(i));
      item.addEventListener("pointermove", () => this.setActive(i, false));
      this.list.appendChild(item);
    });
    const total = this.names.length;
    this.count.textContent = !total
      ? "no LoRAs found: put .safetensors files in a `loras` folder"
      : matches.length > this.shown.length
        ? `${this.shown.length} of ${matches.length} matches shown: type to narrow`
        : `${matches.length} of ${total} LoRAs`;
    this.setActive(this.active, true);
  }

  setActive(index, scroll) {
    const items = this.list.children;
    items[this.active]?.classList.remove("loom-active");
    this.active = Math.max(0, Math.min(index, items.length - 1));
    items[this.active]?.classList.add("loom-active");
    if (scroll) items[this.active]?.scrollIntoView?.({ block: "nearest" });
  }

  key(event) {
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      this.setActive(this.active + (event.key === "ArrowDown" ? 1 : -1), true);
    } else if (event.key === "Enter") {
      event.preventDefault();
      this.pick(this.active);
    } else if (event.key === "Escape") {
      event.preventDefault();
      this.close();
    }
    event.stopPropagation(); // keep ComfyUI's shortcuts out of the search box
  }

  pick(index) {
    const name = this.shown[index];
    const onPick = this.onPick;
    this.close();
    if (name !== undefined) onPick?.(name);
  }
}

export const picker = new LoraPicker();
