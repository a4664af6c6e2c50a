// LoRA Loom: the controls of one stack row. Built once per render of the list and then only refreshed, so a focused
// text box or a strength being dragged survives the edits it makes.
import { button, el } from "./loom_dom.js";
import { attachLoraInfo } from "./loom_lora_info_panel.js";
import { nameParts } from "./loom_lora_picker.js";
import { clipStrength, isOn, modelStrength } from "./loom_stack_rows.js";
import { NumberField } from "./loom_strength_field.js";

export class RowView {
  /** Row `index` of `editor` (a StackEditor); read-only when `rows` comes from a link. */
  constructor(editor, index, readOnly) {
    const root = el("div", "loom-stack-row");
    root.dataset.testid = "loom-stack-row";
    root.dataset.index = String(index);
    const line1 = el("div", "loom-stack-line1");
    const on = el("input");
    on.type = "checkbox";
    on.title = "on: apply this LoRA (off rows are skipped without reading the file)";
    on.dataset.testid = "loom-row-on";
    on.addEventListener("change", () => editor.toggle(index, on.checked));
    const name = button("loom-stack-name", null, "", "loom-row-name", () => editor.openPicker(index));
    const info = button("loom-stack-info", "i", "LoRA info: hover, or click to pin", "loom-row-info", () => {});
    attachLoraInfo(info, () => editor.rows[index]?.name ?? "");
    const model = new NumberField("loom-row-model", "model strength: drag sideways (shift: finer) or click to type", (v) =>
      editor.setStrength(index, "model", v),
    );
    const clip = new NumberField("loom-row-clip", "clip strength: drag sideways (shift: finer) or click to type", (v) =>
      editor.setStrength(index, "clip", v),
    );
    const up = button("loom-stack-up", "\u2191", "move up", "loom-row-up", () => editor.move(index, index - 1));
    const down = button("loom-stack-down", "\u2193", "move down", "loom-row-down", () => editor.move(index, index + 1));
    const remove = button("loom-stack-remove", "\u2715", "remove this row", "loom-row-remove", () => editor.remove(index));
    up.disabled = index === 0;
    down.disabled = index === editor.rows.length - 1;
    line1.append(on, name, info, model.root, clip.root, up, down, remove);
    const line2 = el("div", "loom-stack-line2");
    const text = (key, placeholder, title) => {
      const input = el("input", "loom-stack-text");
      input.type = "text";
      input.placeholder = placeholder;
      input.title = title;
      input.spellcheck = false;
      input.dataset.testid = `loom-row-${key}`;
      input.addEventListener("input", () => editor.update(index, { [key]: input.value }));
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
    Object.assign(this, { root, on, name, info, model, clip, blocks, schedule });
  }

  /** Show `row`'s values in the existing controls; `known` is the loras list (a Set) or null. */
  show(row, known) {
    this.root.classList.toggle("loom-off", !isOn(row));
    this.root.dataset.on = String(isOn(row));
    this.on.checked = isOn(row);
    const name = typeof row.name === "string" ? row.name : "";
    this.name.replaceChildren(name ? nameParts(name) : document.createTextNode("pick a LoRA\u2026"));
    this.name.classList.toggle("loom-missing", !name);
    this.root.dataset.name = name;
    this.flag(row, known);
    this.model.set(modelStrength(row));
    this.clip.set(clipStrength(row), typeof row.clip !== "number");
    this.clip.root.title = `clip strength${typeof row.clip !== "number" ? " (follows model)" : ""}: drag sideways (shift: finer) or click to type`;
    for (const key of ["blocks", "schedule"]) {
      const value = typeof row[key] === "string" ? row[key] : "";
      if (this[key].value !== value && document.activeElement !== this[key]) this[key].value = value;
    }
  }

  /** Flag a file that is not in the `loras` list (the server refuses it when the prompt is queued). */
  flag(row, known) {
    const name = typeof row?.name === "string" ? row.name : "";
    const unknown = !!name && !!known?.size && !known.has(name);
    this.name.classList.toggle("loom-unknown", unknown);
    this.root.dataset.missing = String(unknown);
    this.name.title = !name
      ? "click to pick a LoRA"
      : `${name}${unknown ? "\nnot in any loras folder" : ""}\nclick to pick another`;
  }
}
