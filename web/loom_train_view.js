// LoRA Loom: a live loss chart on Loom Train LoRA. The trainer sends "step N/M  loss X" as ComfyUI progress text each
// step (nodes/train.py) and a preview image every `preview_every` steps through the progress bar; this extension
// listens on ComfyUI's websocket events (progress_text, progress, executing, b_preview_with_metadata, the end of a
// run) and draws the loss (raw, and smoothed) with the step count and the latest preview as a thumbnail. The frontend
// also shows the preview on the node as usual. The chart is a canvas widget and is not serialised; a new run of the
// node starts a new chart.
//
// Hooks for scripts and browser tests: node.loomLossChart (steps, losses, total, state, preview, addText(text),
// reset()); the chart follows api.dispatchCustomEvent("progress_text", {nodeId: String(node.id), text}) too.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { formatLoss, parseLossText, smooth } from "./loom_loss_series.js";

const NODE_NAME = "LoomTrainLora";
const WIDGET_TYPE = "loom_loss_chart";
const HEIGHT = 170;
const MARGIN = 15;
const MAX_POINTS = 5000; // older points are thinned beyond this
const COLORS = { box: "#171b22", plot: "#1f2630", grid: "#34404f", text: "#c8d0da", note: "#9aa6b4",
                 raw: "rgba(120, 170, 255, 0.45)", smooth: "#ffaa3c", error: "#ff8a80" };
const STATE_TEXT = { idle: "waiting for a run", running: "training", done: "done", interrupted: "interrupted",
                     error: "failed", stopped: "stopped" };

const charts = new Set(); // the LossChart of every trainer node on the page

class LossChart {
  constructor(node) {
    this.node = node;
    this.preview = null; // ImageBitmap of the latest preview
    this.reset();
  }

  reset() {
    this.steps = [];
    this.losses = [];
    this.total = 0;
    this.step = 0;
    this.state = "idle";
    this.lastText = "";
    this.closePreview();
    this.redraw();
  }

  closePreview() {
    this.preview?.close?.();
    this.preview = null;
  }

  /** True when a websocket node id names this node (root graph id, or the last part of a subgraph path). */
  matches(id) {
    if (id === null || id === undefined) return false;
    const text = String(id);
    const own = String(this.node.id);
    if (text === own) return true;
    const root = app.graph?.rootGraph ?? app.graph;
    return this.node.graph !== root && text.split(":").pop() === own;
  }

  start() {
    this.reset();
    this.state = "running";
    this.redraw();
  }

  /** One progress text; returns true when it was a loss line. */
  addText(text) {
    const parsed = parseLossText(text);
    if (!parsed) return false;
    const last = this.steps[this.steps.length - 1];
    if (last !== undefined && parsed.step <= last && parsed.step <= 1) this.reset(); // a new run without "executing"
    if (this.state !== "running") this.state = "running";
    this.steps.push(parsed.step);
    this.losses.push(parsed.loss);
    this.total = parsed.steps;
    this.step = parsed.step;
    this.lastText = String(text);
    if (this.steps.length > MAX_POINTS) {
      this.steps = this.steps.filter((_, i) => i % 2 === 0);
      this.losses = this.losses.filter((_, i) => i % 2 === 0);
    }
    this.redraw();
    return true;
  }

  progress(value, max) {
    if (this.state !== "running") this.state = "running";
    this.step = Math.max(this.step, value);
    this.total = max || this.total;
    this.redraw();
  }

  async setPreview(blob) {
    try {
      const bitmap = await createImageBitmap(blob);
      this.closePreview();
      this.preview = bitmap;
      this.redraw();
    } catch (error) {
      console.warn("[LoRA Loom] could not decode a training preview:", error);
    }
  }

  finish(state) {
    if (this.state !== "running") return;
    this.state = state;
    this.redraw();
  }

  redraw() {
    this.node.setDirtyCanvas?.(true, false);
  }

  draw(ctx, width, y) {
    const x = MARGIN;
    const w = Math.max(60, width - 2 * MARGIN);
    const top = y + 2;
    const h = HEIGHT - 4;
    ctx.save();
    ctx.fillStyle = COLORS.box;
    ctx.beginPath();
    ctx.roundRect ? ctx.roundRect(x, top, w, h, 6) : ctx.rect(x, top, w, h);
    ctx.fill();
    ctx.font = "11px sans-serif";
    ctx.textBaseline = "top";
    ctx.textAlign = "left";
    const finite = this.losses.filter(Number.isFinite);
    const averaged = smooth(this.losses);
    const lastLoss = this.losses[this.losses.length - 1];
    const lastAverage = averaged[averaged.length - 1];
    let header = `loss: ${STATE_TEXT[this.state] ?? this.state}`;
    if (this.total) header += ` \u00b7 step ${this.step}/${this.total}`;
    if (lastLoss !== undefined) header += ` \u00b7 loss ${formatLoss(lastLoss)} \u00b7 avg ${formatLoss(lastAverage)}`;
    ctx.fillStyle = this.state === "error" ? COLORS.error : COLORS.text;
    ctx.fillText(header, x + 8, top + 6, w - 16);

    const thumb = this.preview ? Math.min(h - 30, Math.floor(w * 0.35)) : 0;
    const plot = { x: x + 40, y: top + 24, w: w - 48 - (thumb ? thumb + 8 : 0), h: h - 44 };
    ctx.fillStyle = COLORS.plot;
    ctx.fillRect(plot.x, plot.y, plot.w, plot.h);
    if (thumb) {
      const scale = Math.min(thumb / this.preview.width, thumb / this.preview.height);
      const tw = this.preview.width * scale;
      const th = this.preview.height * scale;
      ctx.drawImage(this.preview, plot.x + plot.w + 8 + (thumb - tw) / 2, plot.y + (plot.h - th) / 2, tw, th);
    }
    if (!finite.length) {
      ctx.fillStyle = COLORS.note;
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      const note = this.losses.length ? "no finite loss yet" : "the loss appears here while the trainer runs";
      ctx.fillText(note, plot.x + plot.w / 2, plot.y + plot.h / 2, plot.w - 8);
      ctx.restore();
      return;
    }
    let low = Math.min(...finite);
    let high = Math.max(...finite);
    if (high - low < 1e-12) [low, high] = [low - 0.5 * Math.abs(low || 1), high + 0.5 * Math.abs(high || 1)];
    const pad = (high - low) * 0.06;
    [low, high] = [low - pad, high + pad];
    const first = 0;
    const last = Math.max(this.total, this.steps[this.steps.length - 1], 1);
    const px = (step) => plot.x + ((step - first) / (last - first)) * plot.w;
    const py = (loss) => plot.y + plot.h - ((loss - low) / (high - low)) * plot.h;

    ctx.strokeStyle = COLORS.grid;
    ctx.lineWidth = 1;
    ctx.fillStyle = COLORS.text;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const value of [low + pad, (low + high) / 2, high - pad]) {
      const yy = py(value);
      ctx.beginPath();
      ctx.moveTo(plot.x, yy);
      ctx.lineTo(plot.x + plot.w, yy);
      ctx.stroke();
      ctx.fillText(formatLoss(value), plot.x - 4, yy, 36);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    ctx.fillText("0", plot.x, plot.y + plot.h + 3);
    ctx.fillText(String(last), plot.x + plot.w - 8, plot.y + plot.h + 3);

    const line = (values, color, width) => {
      ctx.strokeStyle = color;
      ctx.lineWidth = width;
      ctx.beginPath();
      let drawing = false;
      values.forEach((value, i) => {
        if (!Number.isFinite(value)) {
          drawing = false;
          return;
        }
        const [xx, yy] = [px(this.steps[i]), py(value)];
        drawing ? ctx.lineTo(xx, yy) : ctx.moveTo(xx, yy);
        drawing = true;
      });
      ctx.stroke();
    };
    ctx.save();
    ctx.beginPath();
    ctx.rect(plot.x, plot.y, plot.w, plot.h);
    ctx.clip();
    line(this.losses, COLORS.raw, 1);
    line(averaged, COLORS.smooth, 2);
    ctx.restore();
    ctx.restore();
  }
}

function addChart(node) {
  const chart = new LossChart(node);
  const widget = {
    name: "loom_loss_chart",
    type: WIDGET_TYPE,
    value: "",
    serialize: false, // not in widgets_values
    options: { serialize: false }, // not in the API prompt
    chart,
    computeSize: (width) => [width, HEIGHT],
    draw(ctx, drawNode, width, y) {
      chart.draw(ctx, width, y);
    },
  };
  node.addCustomWidget(widget); // last, so the other widgets keep their widgets_values indices
  node.loomLossChart = chart;
  charts.add(chart);
  return widget;
}

function chartsFor(id) {
  return [...charts].filter((chart) => chart.matches(id));
}

let running = new Set(); // charts of the node executing now

function listen() {
  api.addEventListener("progress_text", ({ detail }) => {
    for (const chart of chartsFor(detail?.nodeId)) chart.addText(detail.text);
  });
  api.addEventListener("progress", ({ detail }) => {
    for (const chart of chartsFor(detail?.node)) chart.progress(detail.value, detail.max);
  });
  api.addEventListener("executing", ({ detail }) => {
    const now = new Set(chartsFor(detail));
    for (const chart of running) if (!now.has(chart)) chart.finish("done");
    for (const chart of now) if (!running.has(chart)) chart.start();
    running = now;
  });
  api.addEventListener("b_preview_with_metadata", ({ detail }) => {
    const id = detail?.displayNodeId ?? detail?.nodeId;
    for (const chart of chartsFor(id)) chart.setPreview(detail.blob);
  });
  const stop = (state) => () => {
    for (const chart of running) chart.finish(state);
    running = new Set();
  };
  api.addEventListener("execution_success", stop("done"));
  api.addEventListener("execution_interrupted", stop("interrupted"));
  api.addEventListener("execution_error", ({ detail }) => {
    for (const chart of running) chart.finish(chart.matches(detail?.node_id) ? "error" : "stopped");
    running = new Set();
  });
}

app.registerExtension({
  name: "lora_loom.trainView",
  setup() {
    listen();
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_NAME) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      addChart(this);
      const [width, height] = this.computeSize();
      this.setSize([Math.max(width, 360, this.size?.[0] ?? 0), Math.max(height, this.size?.[1] ?? 0)]);
      return result;
    };
    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      if (this.loomLossChart) {
        this.loomLossChart.closePreview();
        charts.delete(this.loomLossChart);
        running.delete(this.loomLossChart);
      }
      return onRemoved?.apply(this, arguments);
    };
  },
});
