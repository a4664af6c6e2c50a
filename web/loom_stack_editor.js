// LoRA Loom: a row editor on the Loom LoRA Stack node. The node's `rows` STRING widget (JSON, nodes/stack.py) stays
// the one serialised value, so saved workflows and the API prompt are plain JSON; it is hidden under the editor
// ("{ } JSON" shows it). The editor lists the rows: on/off, the LoRA (a picker with folder search over ComfyUI's
// `loras` list), an (i) info panel (loom_lora_info.js), model and clip strength (drag sideways, or click to type; shift
// drags finer), block weights and schedule text, move up/down, remove; "+ add LoRA" picks a file for a new row.
// Every edit rewrites `rows` (one row per line) and marks the graph changed; typing in `rows` or loading a workflow
// refreshes the list. File names and every other value are shown with textContent only.
//
// Hooks for scripts and browser tests: node.loomRows (the StackEditor below: rows, text, error, add, remove, move,
// toggle, setStrength, update, setRows, openPicker, showInfo) and data-testid attributes on every control.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { addStyle, attachLoraInfo, showLoraInfo } from "./loom_lora_info.js";
import {
  clipStrength,
  filterNames,
  formatStrength,
  isOn,
  modelStrength,
  moveItem,
  newRow,
  parseRows,
  roundStrength,
  rowsToText,
  splitName,
} from "./loom_stack_rows.js";

const NODE_NAME = "LoomLoraStack";
const WIDGET_NAME = "loom_rows_editor";
const ROW_HEIGHT = 54; // px per row (two lines)
const HEAD_HEIGHT = 18;
const FOOT_HEIGHT = 30;
const EMPTY_HEIGHT = 34;
const NOTE_HEIGHT = 36;
const MIN_WIDTH = 440;
const MARGIN = 6; // the DOM widget's margin on each side
const JSON_HEIGHT = 140; // room given to the rows text when it is shown
const PICKER_LIMIT = 400; // names listed at once; the filter narrows the rest
const NAMES_MS = 5000; // the loras list is fetched again after this

const STYLE = `
.loom-stack { box-sizing: border-box; height: 100%; display: flex; flex-direction: column; gap: 2px;
  font: 12px/1.3 sans-serif; color: var(--input-text, #ddd); overflow: hidden; }
.loom-stack-list { flex: 1; overflow-y: auto; overflow-x: hidden; min-height: 0; }
.loom-stack-head, .loom-stack-line1 { display: grid; align-items: center; column-gap: 4px;
  grid-template-columns: 18px minmax(60px, 1fr) 18px 54px 54px 18px 18px 18px; }
.loom-stack-head { height: ${HEAD_HEIGHT}px; font-size: 10px; opacity: 0.6; padding: 0 4px; }
.loom-stack-head span:nth-child(2) { grid-column: 2 / 4; }
.loom-stack-row { box-sizing: border-box; height: ${ROW_HEIGHT - 2}px; margin-bottom: 2px; padding: 3px 4px;
  border-radius: 4px; background: var(--comfy-input-bg, #222); border: 1px solid transparent; }
.loom-stack-row.loom-off { opacity: 0.5; }
.loom-stack-row:focus-within { border-color: var(--border-color, #4e4e4e); }
.loom-stack-line2 { display: grid; grid-template-columns: 1fr 1fr; column-gap: 4px; margin-top: 3px; }
.loom-stack button { font: inherit; color: inherit; background: var(--comfy-menu-bg, #2b2b2b); cursor: pointer;
  border: 1px solid var(--border-color, #4e4e4e); border-radius: 3px; padding: 0; height: 20px; min-width: 0; }
.loom-stack button:hover:not(:disabled) { filter: brightness(1.3); }
.loom-stack button:disabled { opacity: 0.3; cursor: default; }
.loom-stack input[type=checkbox] { margin: 0; width: 14px; height: 14px; cursor: pointer; }
.loom-stack-name { text-align: left; padding: 0 5px !important; overflow: hidden; white-space: nowrap;
  text-overflow: ellipsis; }
.loom-stack-name.loom-missing { font-style: italic; opacity: 0.7; }
.loom-stack-name.loom-unknown { color: #ffb74d; border-color: #8a6420; }
.loom-stack-folder { opacity: 0.55; }
.loom-stack-info { border-radius: 50% !important; width: 18px; height: 18px !important; font-style: italic;
  font-family: serif !important; font-weight: bold; }
.loom-stack-num { box-sizing: border-box; height: 20px; line-height: 18px; text-align: center; cursor: ew-resize;
  user-select: none; border: 1px solid var(--border-color, #4e4e4e); border-radius: 3px; overflow: hidden;
  background: var(--comfy-menu-bg, #2b2b2b); font-variant-numeric: tabular-nums; }
.loom-stack-num.loom-follows { opacity: 0.55; font-style: italic; }
.loom-stack-num:focus { outline: 1px solid var(--p-primary-color, #6aa0ff); }
.loom-stack-num input, .loom-stack-text { box-sizing: border-box; width: 100%; height: 20px; font: inherit;
  color: inherit; background: var(--comfy-input-bg, #1b1b1b); border: 1px solid var(--border-color, #4e4e4e);
  border-radius: 3px; padding: 0 4px; min-width: 0; }
.loom-stack-num input { border: none; height: 18px; text-align: center; padding: 0; }
.loom-stack-text::placeholder { opacity: 0.45; }
.loom-stack-foot { display: flex; gap: 6px; align-items: center; height: ${FOOT_HEIGHT - 4}px; flex: none; }
.loom-stack-foot button { padding: 0 10px; height: 22px; }
.loom-stack-add { flex: 1; }
.loom-stack-empty { opacity: 0.6; padding: 8px 4px; font-style: italic; }
.loom-stack-note { color: #ffb74d; padding: 2px 4px; overflow: hidden; overflow-wrap: anywhere; font-size: 11px;
  max-height: ${NOTE_HEIGHT - 4}px; flex: none; }
.loom-stack-note[hidden] { display: none; }
.loom-picker { position: fixed; z-index: 10001; width: 360px; max-width: calc(100vw - 16px); box-sizing: border-box;
  display: flex; flex-direction: column; gap: 4px; padding: 6px; border-radius: 6px; font: 12px/1.3 sans-serif;
  background: var(--comfy-menu-bg, #202020); color: var(--fg-color, #ddd); border: 1px solid var(--border-color, #4e4e4e);
  box-shadow: 0 6px 24px rgba(0, 0, 0, 0.5); }
.loom-picker[hidden] { display: none; }
.loom-picker-filter { box-sizing: border-box; width: 100%; height: 24px; font: inherit; color: inherit; padding: 0 6px;
  background: var(--comfy-input-bg, #1b1b1b); border: 1px solid var(--border-color, #4e4e4e); border-radius: 3px; }
.loom-picker-list { max-height: 300px; overflow-y: auto; }
.loom-picker-item { padding: 3px 6px; border-radius: 3px; cursor: pointer; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }
.loom-picker-item.loom-active { background: var(--comfy-input-bg, #333); }
.loom-picker-item.loom-current { font-weight: bold; }
.loom-picker-count { font-size: 10px; opacity: 0.6; }
`;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function button(className, text, title, testid, onClick) {
  const b = el("button", className, text);
  b.type = "button";
  b.title = title;
  b.dataset.testid = testid;
  b.addEventListener("click", (event) => {
    event.stopPropagation();
    onClick(event);
  });
  return b;
}

/** A file name as DOM: the folder part dimmed, then the file (text nodes only). */
function nameParts(name) {
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
    addStyle("loom-stack-style", STYLE);
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

// --- a strength: drag sideways or click to type -------------------------------------------------------------------

class NumberField {
  constructor(testid, title, onChange) {
    this.onChange = onChange; // (value, done) => void
    this.value = 0;
    this.follows = false;
    this.editing = null;
    this.root = el("div", "loom-stack-num");
    this.root.tabIndex = 0;
    this.root.title = title;
    this.root.dataset.testid = testid;
    this.text = el("span");
    this.root.appendChild(this.text);
    this.root.addEventListener("pointerdown", (event) => this.down(event));
    this.root.addEventListener("keydown", (event) => this.key(event));
  }

  set(value, follows = false) {
    this.value = value;
    this.follows = follows;
    this.root.dataset.value = String(value);
    this.root.classList.toggle("loom-follows", follows);
    if (!this.editing) this.text.textContent = formatStrength(value);
  }

  down(event) {
    if (this.editing || event.button !== 0) return;
    event.preventDefault();
    event.stopPropagation();
    this.root.focus();
    const start = { x: event.clientX, value: this.value };
    let dragged = false;
    this.root.setPointerCapture?.(event.pointerId);
    const move = (e) => {
      const dx = e.clientX - start.x;
      if (!dragged && Math.abs(dx) < 3) return;
      dragged = true;
      const step = e.shiftKey ? 0.001 : 0.01;
      const value = roundStrength(Math.round((start.value + dx * step) / step) * step);
      if (value !== this.value) this.onChange(value, false);
    };
    const up = (e) => {
      this.root.removeEventListener("pointermove", move);
      this.root.removeEventListener("pointerup", up);
      this.root.removeEventListener("pointercancel", up);
      this.root.releasePointerCapture?.(e.pointerId);
      if (dragged) this.onChange(this.value, true);
      else this.edit();
    };
    this.root.addEventListener("pointermove", move);
    this.root.addEventListener("pointerup", up);
    this.root.addEventListener("pointercancel", up);
  }

  key(event) {
    if (this.editing) return;
    const steps = { ArrowRight: 0.01, ArrowUp: 0.1, ArrowLeft: -0.01, ArrowDown: -0.1 };
    if (event.key in steps) {
      event.preventDefault();
      event.stopPropagation();
      this.onChange(roundStrength(this.value + steps[event.key] * (event.shiftKey ? 0.1 : 1)), true);
    } else if (event.key === "Enter") {
      event.preventDefault();
      event.stopPropagation();
      this.edit();
    } else if (event.key === "Delete" || event.key === "Backspace") {
      event.stopPropagation(); // not ComfyUI's "delete the selected nodes"
    }
  }

  /** Type a value: Enter or leaving the box sets it, Escape keeps the old one. */
  edit() {
    const input = el("input");
    input.type = "text";
    input.inputMode = "decimal";
    input.value = formatStrength(this.value);
    input.dataset.testid = "loom-num-input";
    this.editing = input;
    this.text.replaceWith(input);
    input.focus();
    input.select();
    let done = false;
    const finish = (accept) => {
      if (done) return;
      done = true;
      const value = Number(input.value.trim().replace(",", "."));
      this.editing = null;
      input.replaceWith(this.text);
      if (accept && input.value.trim() !== "" && Number.isFinite(value)) this.onChange(roundStrength(value), true);
      else this.set(this.value, this.follows);
    };
    input.addEventListener("keydown", (event) => {
      event.stopPropagation();
      if (event.key === "Enter") finish(true);
      else if (event.key === "Escape") finish(false);
    });
    input.addEventListener("blur", () => finish(true));
    input.addEventListener("pointerdown", (event) => event.stopPropagation());
  }
}

// --- the editor ----------------------------------------------------------------------------------------------------

export class StackEditor {
  constructor(node) {
    this.node = node;
    this.rows = [];
    this.error = null;
    this.text = null; // the rows text last read or written
    this.writing = false;
    this.views = []; // per row: {root, on, name, info, model, clip, up, down, blocks, schedule}
    this.known = null; // the loras list last fetched (Set), for flagging unknown names
    this.build();
  }

  // -- widget plumbing

  rowsWidget() {
    return this.node.widgets?.find((w) => w.name === "rows");
  }

  /** True when `rows` comes from a link (the editor then only shows it). */
  linked() {
    const input = this.node.inputs?.find((i) => i.name === "rows" || i.widget?.name === "rows");
    return input?.link != null;
  }

  get jsonVisible() {
    const widget = this.rowsWidget();
    return !!widget && !widget.hidden;
  }

  /** Show or hide the `rows` text under the editor. */
  showJson(show = !this.jsonVisible) {
    const widget = this.rowsWidget();
    if (!widget) return;
    widget.hidden = !show;
    this.jsonButton.classList.toggle("loom-on", show);
    this.jsonButton.textContent = show ? "hide JSON" : "{ } JSON";
    this.fit(true, show ? JSON_HEIGHT : 0);
  }

  /** Read the `rows` widget (when its text changed, or always with force) and redraw the list. */
  load(force = false) {
    const text = String(this.rowsWidget()?.value ?? "");
    if (!force && text === this.text) return;
    this.text = text;
    const parsed = parseRows(text);
    this.error = parsed.error ?? null;
    if (!this.error) this.rows = parsed.rows;
    this.render();
    if (this.error && !this.jsonVisible) this.showJson(true);
    else this.fit(false);
  }

  /** Write the rows into the `rows` widget; `structural` redraws the list. */
  commit(structural = false) {
    const text = rowsToText(this.rows);
    this.text = text;
    this.error = null;
    const widget = this.rowsWidget();
    if (widget && widget.value !== text) {
      this.writing = true;
      try {
        widget.value = text; // a DOM widget's setter runs its callback (ours sees `writing` and ignores it)
      } finally {
        this.writing = false;
      }
    }
    if (structural) {
      this.render();
      this.fit(true, this.jsonVisible ? JSON_HEIGHT : 0);
    } else {
      this.note.hidden = true;
    }
    this.changed();
  }

  changed() {
    this.node.setDirtyCanvas?.(true, true);
    this.node.graph?.setDirtyCanvas?.(true, true);
    this.node.graph?.change?.();
    // ComfyUI's workflow tracker compares the graph after user input events; ask it now too.
    app.extensionManager?.workflow?.activeWorkflow?.changeTracker?.checkState?.();
  }

  height() {
    const rows = this.error ? 0 : this.rows.length;
    const list = rows ? HEAD_HEIGHT + rows * ROW_HEIGHT : EMPTY_HEIGHT;
    return list + FOOT_HEIGHT + (this.error || this.linked() ? NOTE_HEIGHT : 0) + 2 * MARGIN;
  }

  /** Size the node for the rows: exactly (after an edit) or only growing (a loaded workflow keeps its size). */
  fit(exact, extra = 0) {
    const node = this.node;
    if (!node.computeSize || !node.setSize) return;
    const [width, height] = node.computeSize();
    const wanted = height + extra;
    node.setSize([Math.max(width, node.size?.[0] ?? 0), exact ? wanted : Math.max(wanted, node.size?.[1] ?? 0)]);
    node.setDirtyCanvas?.(true, true);
  }

  // -- editing (all of these write `rows`)

  check(index) {
    if (this.error) throw new Error(`${this.error}; fix the JSON first`);
    if (!Number.isInteger(index) || index < 0 || index >= this.rows.length) {
      throw new RangeError(`rows: no row ${index + 1} (the stack has ${this.rows.length})`);
    }
  }

  /** Add a row for `name` (fields override the defaults); returns its index. */
  add(name = "", fields = {}) {
    if (this.error) throw new Error(`${this.error}; fix the JSON first`);
    this.rows.push({ ...newRow(name), ...fields });
    this.commit(true);
    return this.rows.length - 1;
  }

  remove(index) {
    this.check(index);
    this.rows.splice(index, 1);
    this.commit(true);
  }

  move(from, to) {
    this.check(from);
    this.rows = moveItem(this.rows, from, to);
    this.commit(true);
  }

  toggle(index, on = !isOn(this.rows[index])) {
    this.check(index);
    this.rows[index].on = !!on;
    this.refreshRow(index);
    this.commit();
  }

  setStrength(index, which, value) {
    this.check(index);
    if (which !== "model" && which !== "clip") throw new Error(`strength: "model" or "clip", not ${which}`);
    if (typeof value !== "number" || !Number.isFinite(value)) throw new Error(`${which}: not a finite number`);
    this.rows[index][which] = roundStrength(value);
    this.refreshRow(index);
    this.commit();
  }

  /** Set fields of a row (name, on, model, clip, blocks, schedule); empty blocks/schedule are left out. */
  update(index, fields) {
    this.check(index);
    Object.assign(this.rows[index], fields);
    this.refreshRow(index);
    this.commit();
  }

  /** Replace all rows. */
  setRows(rows) {
    this.rows = rows.map((row) => ({ ...row }));
    this.commit(true);
  }

  /** Open the picker for row `index` (or for a new row with null). */
  openPicker(index = null) {
    if (this.linked() || this.error) return null;
    const anchor = index === null ? this.addButton : this.views[index]?.name;
    const current = index === null ? null : this.rows[index]?.name;
    return picker.open(anchor, {
      current,
      onPick: (name) => (index === null ? this.add(name) : this.update(index, { name })),
    });
  }

  /** Show the info panel of row `index` (pinned); returns a promise of the route's answer. */
  showInfo(index) {
    this.check(index);
    return showLoraInfo(this.rows[index].name, this.views[index]?.info ?? null, { pinned: true });
  }

  // -- DOM

  build() {
    addStyle("loom-stack-style", STYLE);
    const root = el("div", "loom-stack");
    root.dataset.testid = "loom-stack-editor";
    this.list = el("div", "loom-stack-list");
    this.list.dataset.testid = "loom-stack-rows";
    this.note = el("div", "loom-stack-note");
    this.note.dataset.testid = "loom-stack-note";
    this.note.hidden = true;
    const foot = el("div", "loom-stack-foot");
    this.addButton = button("loom-stack-add", "+ add LoRA", "add a row: pick a LoRA file", "loom-stack-add", () =>
      this.openPicker(null),
    );
    this.jsonButton = button("loom-stack-json", "{ } JSON", "show the rows as JSON text (the saved value)", "loom-stack-json", () =>
      this.showJson(),
    );
    foot.append(this.addButton, this.jsonButton);
    root.append(this.list, this.note, foot);
    // Middle-button panning and ctrl-wheel zoom go to the canvas, as over ComfyUI's own text boxes.
    for (const type of ["pointerdown", "pointermove", "pointerup"]) {
      root.addEventListener(type, (event) => {
        const middle = type === "pointermove" ? (event.buttons & 4) === 4 : event.button === 1;
        if (!middle) return;
        const canvas = app.canvas;
        ({ pointerdown: canvas?.processMouseDown, pointermove: canvas?.processMouseMove, pointerup: canvas?.processMouseUp })[
          type
        ]?.call(canvas, event);
      });
    }
    // Keys typed in the editor are the editor's: not ComfyUI's shortcuts (Delete/Backspace delete selected nodes).
    root.addEventListener("keydown", (event) => {
      if (event.key === "Delete" || event.key === "Backspace" || event.target instanceof HTMLInputElement) {
        event.stopPropagation();
      }
    });
    root.addEventListener("wheel", (event) => {
      const scrollable = this.list.scrollHeight > this.list.clientHeight;
      if (event.ctrlKey || !scrollable) {
        event.preventDefault();
        app.canvas?.processMouseWheel?.(event);
      }
    });
    this.element = root;
  }

  render() {
    this.views = [];
    this.list.replaceChildren();
    const linked = this.linked();
    this.addButton.disabled = linked || !!this.error;
    this.note.hidden = !(this.error || linked);
    this.note.textContent = this.error
      ? `${this.error}. Fix the JSON text above; the rows come back once it is valid.`
      : linked
        ? "rows come from a link: edit them where they come from."
        : "";
    if (this.error) return;
    if (!this.rows.length) {
      this.list.appendChild(el("div", "loom-stack-empty", "no LoRAs yet: + add LoRA"));
      return;
    }
    const head = el("div", "loom-stack-head");
    for (const label of ["on", "LoRA", "model", "clip"]) head.appendChild(el("span", null, label));
    this.list.appendChild(head);
    this.rows.forEach((row, index) => {
      const view = this.rowView(index, linked);
      this.views.push(view);
      this.list.appendChild(view.root);
      this.refreshRow(index);
    });
    loraNames().then((names) => this.markUnknown(names));
  }

  /** Flag rows whose file is not in the `loras` list (the server refuses them when the prompt is queued). */
  markUnknown(names) {
    this.known = new Set(names);
    this.views.forEach((_, index) => this.flagRow(index));
  }

  flagRow(index) {
    const view = this.views[index];
    const name = typeof this.rows[index]?.name === "string" ? this.rows[index].name : "";
    const unknown = !!name && !!this.known?.size && !this.known.has(name);
    if (!view) return;
    view.name.classList.toggle("loom-unknown", unknown);
    view.root.dataset.missing = String(unknown);
    view.name.title = !name
      ? "click to pick a LoRA"
      : `${name}${unknown ? "\nnot in any loras folder" : ""}\nclick to pick another`;
  }

  rowView(index, readOnly) {
    const root = el("div", "loom-stack-row");
    root.dataset.testid = "loom-stack-row";
    root.dataset.index = String(index);
    const line1 = el("div", "loom-stack-line1");
    const on = el("input");
    on.type = "checkbox";
    on.title = "on: apply this LoRA (off rows are skipped without reading the file)";
    on.dataset.testid = "loom-row-on";
    on.addEventListener("change", () => this.toggle(index, on.checked));
    const name = button("loom-stack-name", null, "", "loom-row-name", () => this.openPicker(index));
    const info = button("loom-stack-info", "i", "LoRA info: hover, or click to pin", "loom-row-info", () => {});
    attachLoraInfo(info, () => this.rows[index]?.name ?? "");
    const model = new NumberField("loom-row-model", "model strength: drag sideways (shift: finer) or click to type", (v) =>
      this.setStrength(index, "model", v),
    );
    const clip = new NumberField("loom-row-clip", "clip strength: drag sideways (shift: finer) or click to type", (v) =>
      this.setStrength(index, "clip", v),
    );
    const up = button("loom-stack-up", "\u2191", "move up", "loom-row-up", () => this.move(index, index - 1));
    const down = button("loom-stack-down", "\u2193", "move down", "loom-row-down", () => this.move(index, index + 1));
    const remove = button("loom-stack-remove", "\u2715", "remove this row", "loom-row-remove", () => this.remove(index));
    up.disabled = index === 0;
    down.disabled = index === this.rows.length - 1;
    line1.append(on, name, info, model.root, clip.root, up, down, remove);
    const line2 = el("div", "loom-stack-line2");
    const text = (key, placeholder, title) => {
      const input = el("input", "loom-stack-text");
      input.type = "text";
      input.placeholder = placeholder;
      input.title = title;
      input.spellcheck = false;
      input.dataset.testid = `loom-row-${key}`;
      input.addEventListener("input", () => this.update(index, { [key]: input.value }));
      input.addEventListener("keydown", (event) => event.stopPropagation());
      return input;
    };
    const blocks = text("blocks", "blocks: all", "block weights: a preset (OUTALL, INS ...), IN04:0.5, OUT:1 or an LBW vector");
    const schedule = text("schedule", "schedule: static", "strength over the steps: 0:0.2, 0.4:1, 1:0 or fade_out; per block IN: ... | OUT: ...");
    line2.append(blocks, schedule);
    root.append(line1, line2);
    if (readOnly) {
      for (const control of [on, name, up, down, remove, blocks, schedule]) control.disabled = true;
      for (const field of [model, clip]) field.root.style.pointerEvents = "none";
    }
    return { root, on, name, info, model, clip, blocks, schedule };
  }

  /** Show row `index`'s values in its existing controls (no rebuild: focus and drags survive). */
  refreshRow(index) {
    const view = this.views[index];
    const row = this.rows[index];
    if (!view || !row) return;
    view.root.classList.toggle("loom-off", !isOn(row));
    view.root.dataset.on = String(isOn(row));
    view.on.checked = isOn(row);
    const name = typeof row.name === "string" ? row.name : "";
    view.name.replaceChildren(name ? nameParts(name) : document.createTextNode("pick a LoRA\u2026"));
    view.name.classList.toggle("loom-missing", !name);
    view.root.dataset.name = name;
    this.flagRow(index);
    view.model.set(modelStrength(row));
    view.clip.set(clipStrength(row), typeof row.clip !== "number");
    view.clip.root.title = `clip strength${typeof row.clip !== "number" ? " (follows model)" : ""}: drag sideways (shift: finer) or click to type`;
    for (const key of ["blocks", "schedule"]) {
      const value = typeof row[key] === "string" ? row[key] : "";
      if (view[key].value !== value && document.activeElement !== view[key]) view[key].value = value;
    }
  }
}

function addEditor(node) {
  const editor = new StackEditor(node);
  const widget = node.addDOMWidget(WIDGET_NAME, "loom_rows", editor.element, {
    serialize: false, // not in the API prompt
    margin: MARGIN,
    getValue: () => "",
    setValue: () => {},
    getMinHeight: () => editor.height(),
    getMaxHeight: () => editor.height(),
  });
  widget.serialize = false; // not in widgets_values: `rows` is the saved value
  node.loomRows = editor;

  const rows = editor.rowsWidget();
  if (rows) {
    const original = rows.callback;
    rows.callback = function () {
      const result = original?.apply(this, arguments);
      if (!editor.writing) editor.load(); // typed in, or set by a workflow being loaded
      return result;
    };
    rows.hidden = true; // under the editor; "{ } JSON" shows it
    // LiteGraph lays widgets out without asking whether they are hidden: a hidden `rows` takes no room.
    const layout = rows.computeLayoutSize;
    if (layout) {
      rows.computeLayoutSize = function () {
        return this.hidden ? { minHeight: 0, maxHeight: 0, minWidth: 0 } : layout.apply(this, arguments);
      };
    }
  }
  editor.load(true);
  return widget;
}

app.registerExtension({
  name: "lora_loom.stackEditor",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name === "LoomLoraLoader" || nodeData?.name === "LoomLoraInfo") {
      const names = optionsOf(nodeData.input?.required?.lora_name);
      if (names) comboNames = names.map(String);
    }
    if (nodeData?.name !== NODE_NAME) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      addEditor(this);
      const [width, height] = this.computeSize();
      this.setSize([Math.max(width, MIN_WIDTH, this.size?.[0] ?? 0), height]);
      return result;
    };
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const result = onConfigure?.apply(this, arguments);
      this.loomRows?.load(true); // a loaded workflow: the list follows its `rows`
      return result;
    };
    const onConnectionsChange = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function () {
      const result = onConnectionsChange?.apply(this, arguments);
      this.loomRows?.load(true); // `rows` linked or unlinked: editable or not
      return result;
    };
    const computeSize = nodeType.prototype.computeSize;
    nodeType.prototype.computeSize = function () {
      const size = computeSize.apply(this, arguments);
      size[0] = Math.max(size[0], MIN_WIDTH);
      return size;
    };
  },
});
