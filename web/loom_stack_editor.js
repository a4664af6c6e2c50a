// LoRA Loom: a row editor on the Loom LoRA Stack node. The node's `rows` STRING widget (JSON, nodes/stack.py) stays
// the one serialised value, so saved workflows and the API prompt are plain JSON; it is hidden under the editor
// ("{ } JSON" shows it). The editor lists the rows: on/off, the LoRA (a picker with folder search over ComfyUI's
// `loras` list), an (i) info panel (loom_lora_info_panel.js), model and clip strength (drag sideways, or click to
// type; shift drags finer), block weights and schedule text, move up/down, remove; "+ add LoRA" picks a file for a
// new row. Every edit rewrites `rows` (one row per line) and marks the graph changed; typing in `rows` or loading a
// workflow refreshes the list. File names and every other value are shown with textContent only.
// This file hooks the node; the editor is loom_stack_widget.js (one row: loom_stack_row_view.js, a strength:
// loom_strength_field.js), the picker loom_lora_picker.js, the pure row model loom_stack_rows.js.
//
// Hooks for scripts and browser tests: node.loomRows (the StackEditor of loom_stack_widget.js: rows, text, error, add,
// remove, move, toggle, setStrength, update, setRows, openPicker, showInfo) and data-testid attributes on every
// control.
import { app } from "../../scripts/app.js";
import { learnComboNames } from "./loom_lora_picker.js";
import { MARGIN } from "./loom_stack_style.js";
import { StackEditor } from "./loom_stack_widget.js";

const NODE_NAME = "LoomLoraStack";
const WIDGET_NAME = "loom_rows_editor";
const MIN_WIDTH = 440;

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
      learnComboNames(nodeData);
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
