// LoRA Loom: the stack node's row editor (the DOM widget loom_stack_editor.js puts on Loom LoRA Stack): the rows it
// shows, the edits (each one rewrites the `rows` text) and the node size that fits them.
import { app } from "../../scripts/app.js";
import { button, el } from "./loom_dom.js";
import { showLoraInfo } from "./loom_lora_info_panel.js";
import { loraNames, picker } from "./loom_lora_picker.js";
import { RowView } from "./loom_stack_row_view.js";
import { isOn, moveItem, newRow, parseRows, roundStrength, rowsToText } from "./loom_stack_rows.js";
import {
  EMPTY_HEIGHT,
  FOOT_HEIGHT,
  HEAD_HEIGHT,
  MARGIN,
  NOTE_HEIGHT,
  ROW_HEIGHT,
  addStackStyle,
} from "./loom_stack_style.js";

const JSON_HEIGHT = 140; // room given to the rows text when it is shown

export class StackEditor {
  constructor(node) {
    this.node = node;
    this.rows = [];
    this.error = null;
    this.text = null; // the rows text last read or written
    this.writing = false;
    this.views = []; // a RowView per row
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
    addStackStyle();
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
      const view = new RowView(this, index, linked);
      this.views.push(view);
      this.list.appendChild(view.root);
      this.refreshRow(index);
    });
    loraNames().then((names) => this.markUnknown(names));
  }

  /** Flag rows whose file is not in the `loras` list. */
  markUnknown(names) {
    this.known = new Set(names);
    this.views.forEach((view, index) => view.flag(this.rows[index], this.known));
  }

  /** Show row `index`'s values in its existing controls (no rebuild: focus and drags survive). */
  refreshRow(index) {
    const row = this.rows[index];
    if (row) this.views[index]?.show(row, this.known);
  }
}
