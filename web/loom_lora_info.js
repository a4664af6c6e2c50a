// LoRA Loom: a "LoRA info" line on Loom LoRA Loader and Loom LoRA Info, under their widgets: hover or click it (or the
// node's menu entry) for the info panel of the picked file (loom_lora_info_panel.js). The canvas widget is not
// serialised.
import { app } from "../../scripts/app.js";
import { HOVER_DELAY_MS, infoPanel } from "./loom_lora_info_panel.js";

const LOADER_NODES = new Set(["LoomLoraLoader", "LoomLoraInfo"]);

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
