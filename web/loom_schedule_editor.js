// LoRA Loom: a curve editor on the Loom LoRA Schedule node. It shows the `schedule` text as keyframes over sampling
// progress (x, 0..1) and strength (y); drag a keyframe to move it, click empty space to add one, shift-click or
// right-click a keyframe to remove it (right-click also sets the mode of the segment under the pointer). Every edit
// writes the canonical text into the `schedule` widget and sets `preset` to custom; typing in the text redraws the
// curve. Texts the editor cannot edit (step positions @k, errors) are shown as a note, with nothing draggable.
// The canvas widget is not serialised: saved workflows keep only preset, schedule, blocks and preview_steps.
import { app } from "../../scripts/app.js";
import { HEIGHT, PLOT, drawCurve } from "./loom_schedule_draw.js";
import { PRESET_TEXT, mainMode, parseSchedule, scheduleToText } from "./loom_schedule_text.js";

const NODE_NAME = "LoomLoraSchedule";
const WIDGET_TYPE = "loom_schedule_curve";
const MIN_WIDTH = 320;
const HIT = 8; // px: how near a keyframe a click must be to grab it
const GRID_STEP = 0.01; // positions and strengths snap to this while dragging

const round = (value) => Number((Math.round(value / GRID_STEP) * GRID_STEP).toFixed(6));

function strengthRange(keyframes) {
  const strengths = keyframes.map(([, s]) => s);
  const low = Math.min(0, ...strengths);
  const high = Math.max(1, ...strengths);
  const pad = (high - low) * 0.08;
  return [low - pad, high + pad];
}

/** The editor's state and geometry; one per node. */
class CurveEditor {
  constructor(node) {
    this.node = node;
    this.text = null; // the schedule text last parsed (or written)
    this.parsed = null;
    this.drag = null; // {index, range} while a keyframe is being dragged
    this.hover = -1;
    this.box = null; // the widget's last drawn box, node-local: {x, y, w, h}
    this.writing = false; // true while the editor itself sets widget values
  }

  widget(name) {
    return this.node.widgets?.find((w) => w.name === name);
  }

  /** The parse of the schedule widget's current text (cached by text). */
  current() {
    const text = String(this.widget("schedule")?.value ?? "");
    if (text !== this.text) {
      this.text = text;
      this.parsed = parseSchedule(text);
      if (this.drag) this.drag = null;
    }
    return this.parsed;
  }

  editable() {
    const parsed = this.current();
    return parsed && parsed.keyframes ? parsed : null;
  }

  plotRect() {
    const { x, y, w, h } = this.box;
    return { x: x + PLOT.left, y: y + PLOT.top, w: w - PLOT.left - PLOT.right, h: h - PLOT.top - PLOT.bottom };
  }

  range(parsed) {
    return this.drag ? this.drag.range : strengthRange(parsed.keyframes);
  }

  toPixel([progress, strength], range) {
    const r = this.plotRect();
    const [low, high] = range;
    return [r.x + progress * r.w, r.y + r.h - ((strength - low) / (high - low)) * r.h];
  }

  fromPixel([px, py], range) {
    const r = this.plotRect();
    const [low, high] = range;
    return [(px - r.x) / r.w, low + ((r.y + r.h - py) / r.h) * (high - low)];
  }

  /** Index of the keyframe within HIT px of a node-local position, or -1. */
  keyframeAt(pos) {
    const parsed = this.editable();
    if (!parsed || !this.box) return -1;
    const range = this.range(parsed);
    let best = -1;
    let bestDistance = HIT;
    parsed.keyframes.forEach((keyframe, i) => {
      const [x, y] = this.toPixel(keyframe, range);
      const distance = Math.hypot(x - pos[0], y - pos[1]);
      if (distance <= bestDistance) [best, bestDistance] = [i, distance];
    });
    return best;
  }

  /** Index of the segment (keyframe i to i + 1) under a node-local position, or -1. */
  segmentAt(pos) {
    const parsed = this.editable();
    if (!parsed || !this.box || parsed.keyframes.length < 2) return -1;
    const [progress] = this.fromPixel(pos, this.range(parsed));
    const positions = parsed.keyframes.map(([p]) => p);
    for (let i = 0; i < positions.length - 1; i++) if (progress >= positions[i] && progress < positions[i + 1]) return i;
    return -1;
  }

  inside(pos) {
    const b = this.box;
    return !!b && pos[0] >= b.x && pos[0] <= b.x + b.w && pos[1] >= b.y && pos[1] <= b.y + b.h;
  }

  /** Write the edited schedule as canonical text into the schedule widget; preset becomes custom. */
  commit(parsed) {
    const text = scheduleToText(parsed);
    this.parsed = parsed;
    this.text = text;
    this.writing = true; // our own writes: not a user edit of the text
    try {
      const schedule = this.widget("schedule");
      if (schedule && schedule.value !== text) schedule.value = text; // a DOM widget's setter calls its callback
      const preset = this.widget("preset");
      if (preset && preset.value !== "custom") {
        preset.value = "custom";
        preset.callback?.("custom", app.canvas, this.node);
      }
    } finally {
      this.writing = false;
    }
    this.node.setDirtyCanvas(true, true);
  }

  /** Move keyframe `index` towards (progress, strength): snapped, clamped to 0..1, strictly between neighbours. */
  move(index, progress, strength) {
    const parsed = this.editable();
    if (!parsed) return;
    const keyframes = parsed.keyframes.map((k) => [...k]);
    const previous = index > 0 ? keyframes[index - 1][0] : null;
    const next = index < keyframes.length - 1 ? keyframes[index + 1][0] : null;
    // grid positions strictly between the neighbours (or 0..1 at the ends)
    const lowest = previous === null ? 0 : round(Math.floor(previous / GRID_STEP + 1e-9) * GRID_STEP + GRID_STEP);
    const highest = next === null ? 1 : round(Math.ceil(next / GRID_STEP - 1e-9) * GRID_STEP - GRID_STEP);
    let position = keyframes[index][0];
    if (lowest <= highest) position = Math.min(highest, Math.max(lowest, round(Math.min(1, Math.max(0, progress)))));
    keyframes[index] = [position, round(strength)];
    this.commit({ keyframes, modes: [...parsed.modes] });
  }

  /** Add a keyframe at (progress, strength); returns its index, or -1 when a keyframe is already there. */
  add(progress, strength) {
    const parsed = this.editable();
    if (!parsed) return -1;
    const position = round(Math.min(1, Math.max(0, progress)));
    const keyframes = parsed.keyframes.map((k) => [...k]);
    if (keyframes.some(([p]) => p === position)) return -1;
    const index = keyframes.filter(([p]) => p < position).length;
    const modes = [...parsed.modes];
    const common = mainMode(modes);
    if (index === 0) modes.unshift(common); // a new first segment
    else if (index === keyframes.length) modes.push(modes[modes.length - 1] ?? common); // a new last segment
    else modes.splice(index, 0, modes[index - 1]); // splitting a segment: both halves keep its mode
    keyframes.splice(index, 0, [position, round(strength)]);
    this.commit({ keyframes, modes });
    return index;
  }

  /** Remove keyframe `index` (never the last one left); the merged segment keeps the mode of the one before. */
  remove(index) {
    const parsed = this.editable();
    if (!parsed || parsed.keyframes.length <= 1 || index < 0 || index >= parsed.keyframes.length) return false;
    const keyframes = parsed.keyframes.filter((_, i) => i !== index);
    const modes = [...parsed.modes];
    modes.splice(index === parsed.keyframes.length - 1 ? index - 1 : index, 1);
    this.commit({ keyframes, modes });
    return true;
  }

  setMode(segment, mode) {
    const parsed = this.editable();
    if (!parsed || segment < 0 || segment >= parsed.modes.length) return;
    const modes = [...parsed.modes];
    modes[segment] = mode;
    this.commit({ keyframes: parsed.keyframes, modes });
  }

  draw(ctx, width, y) {
    drawCurve(this, ctx, width, y);
  }

  /** LiteGraph widget mouse handler; returns true when the canvas must redraw. */
  mouse(event, pos) {
    const type = event.type;
    if (type === "pointerdown" || type === "mousedown") {
      const parsed = this.editable();
      if (!parsed || !this.inside(pos)) return false;
      const index = this.keyframeAt(pos);
      if (index >= 0 && (event.shiftKey || event.altKey || event.button === 2)) {
        this.remove(index);
        return true;
      }
      const range = strengthRange(parsed.keyframes);
      if (index >= 0) {
        this.drag = { index, range };
        return true;
      }
      const r = this.plotRect();
      if (pos[0] < r.x - HIT || pos[0] > r.x + r.w + HIT) return false;
      const [progress, strength] = this.fromPixel(pos, range);
      const added = this.add(progress, strength);
      if (added >= 0) this.drag = { index: added, range };
      return true;
    }
    if (type === "pointermove" || type === "mousemove") {
      if (!this.drag) {
        const hover = this.inside(pos) ? this.keyframeAt(pos) : -1;
        const changed = hover !== this.hover;
        this.hover = hover;
        return changed;
      }
      const [progress, strength] = this.fromPixel(pos, this.drag.range);
      const drag = this.drag;
      this.move(drag.index, progress, strength);
      this.drag = drag; // commit keeps the text in sync, so the drag survives
      return true;
    }
    if (type === "pointerup" || type === "mouseup") {
      const wasDragging = !!this.drag;
      this.drag = null;
      return wasDragging;
    }
    return false;
  }

  /** Context-menu entries for the keyframe / segment under the last pointer position. */
  menuOptions(canvas) {
    const pos = [canvas.graph_mouse[0] - this.node.pos[0], canvas.graph_mouse[1] - this.node.pos[1]];
    if (!this.editable() || !this.inside(pos)) return [];
    const options = [];
    const index = this.keyframeAt(pos);
    if (index >= 0 && this.parsed.keyframes.length > 1) {
      options.push({ content: "Remove keyframe", callback: () => this.remove(index) });
    }
    const segment = index >= 0 ? -1 : this.segmentAt(pos);
    if (segment >= 0) {
      for (const mode of ["hold", "linear", "smooth"]) {
        const current = this.parsed.modes[segment] === mode;
        options.push({
          content: `Segment ${segment + 1}: ${mode}${current ? " (current)" : ""}`,
          disabled: current,
          callback: () => this.setMode(segment, mode),
        });
      }
    }
    return options;
  }
}

function addCurveWidget(node) {
  const editor = new CurveEditor(node);
  const widget = {
    name: "loom_curve",
    type: WIDGET_TYPE,
    value: "",
    serialize: false, // not in widgets_values
    options: { serialize: false }, // not in the API prompt
    editor,
    computeSize: (width) => [width, HEIGHT],
    draw(ctx, drawNode, width, y) {
      editor.draw(ctx, width, y);
    },
    mouse(event, pos) {
      return editor.mouse(event, pos);
    },
  };
  node.addCustomWidget(widget); // last, so the other widgets keep their widgets_values indices
  node.loomCurveEditor = editor;

  const schedule = editor.widget("schedule");
  if (schedule) {
    const original = schedule.callback;
    schedule.callback = function () {
      const result = original?.apply(this, arguments);
      node.setDirtyCanvas(true, true); // the curve follows the text (draw re-parses it when it changed)
      return result;
    };
    // Typing (not a workflow being loaded, not our own writes): the text is now the schedule, so a preset stops
    // applying.
    schedule.inputEl?.addEventListener("input", () => {
      const preset = editor.widget("preset");
      if (preset && preset.value !== "custom") {
        preset.value = "custom";
        preset.callback?.("custom", app.canvas, node);
      }
      node.setDirtyCanvas(true, true);
    });
  }
  const preset = editor.widget("preset");
  if (preset) {
    const original = preset.callback;
    preset.callback = function (value) {
      const result = original?.apply(this, arguments);
      const text = PRESET_TEXT[value];
      if (!editor.writing && text !== undefined && schedule) {
        editor.writing = true;
        try {
          schedule.value = text; // show the preset's keyframes; the node ignores the text until it is edited
        } finally {
          editor.writing = false;
        }
      }
      node.setDirtyCanvas(true, true);
      return result;
    };
  }
  return widget;
}

app.registerExtension({
  name: "lora_loom.scheduleEditor",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_NAME) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      addCurveWidget(this);
      const [width, height] = this.computeSize();
      this.setSize([Math.max(width, 400, this.size?.[0] ?? 0), Math.max(height, this.size?.[1] ?? 0)]);
      return result;
    };
    const computeSize = nodeType.prototype.computeSize;
    nodeType.prototype.computeSize = function () {
      const size = computeSize.apply(this, arguments);
      size[0] = Math.max(size[0], MIN_WIDTH); // room for the curve when LiteGraph fits the node to its content
      return size;
    };
    const getExtraMenuOptions = nodeType.prototype.getExtraMenuOptions;
    nodeType.prototype.getExtraMenuOptions = function (canvas, options) {
      const result = getExtraMenuOptions?.apply(this, arguments);
      const extra = this.loomCurveEditor?.menuOptions(canvas) ?? [];
      if (extra.length) options.unshift(...extra, null);
      return result;
    };
  },
});
