// LoRA Loom: a strength box of the stack editor: drag sideways or click to type, like ComfyUI's number widgets, in a
// DOM row where LiteGraph's own widgets cannot go.
import { el } from "./loom_dom.js";
import { formatStrength, roundStrength } from "./loom_stack_rows.js";

export class NumberField {
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
