// LoRA Loom: drawing the schedule curve editor (loom_schedule_editor.js) on its canvas widget: the plot, its grid
// and labels, the curve sampled per pixel column and the keyframes (the active one with its value).
import { strengthAt } from "./loom_schedule_text.js";

export const HEIGHT = 180;
export const MARGIN = 15; // LiteGraph's widget margin
export const PLOT = { left: 34, right: 10, top: 10, bottom: 22 }; // inside the widget's box
const COLORS = { box: "#171b22", plot: "#1f2630", grid: "#34404f", axis: "#6d7b8d", text: "#c8d0da",
                 curve: "#ffaa3c", point: "#ffd08a", active: "#ffffff", note: "#9aa6b4" };

/** Draw `editor` (a CurveEditor) in the widget row at `y` of a node `width` px wide; sets `editor.box`. */
export function drawCurve(editor, ctx, width, y) {
  editor.box = { x: MARGIN, y: y + 2, w: Math.max(40, width - 2 * MARGIN), h: HEIGHT - 4 };
  const { x, w, h } = editor.box;
  ctx.save();
  ctx.fillStyle = COLORS.box;
  ctx.beginPath();
  ctx.roundRect ? ctx.roundRect(x, editor.box.y, w, h, 6) : ctx.rect(x, editor.box.y, w, h);
  ctx.fill();
  const parsed = editor.current();
  ctx.font = "11px sans-serif";
  if (!parsed.keyframes) {
    ctx.fillStyle = COLORS.note;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    const note = parsed.steps
      ? "step positions (@k): edit the schedule as text"
      : `not editable as a curve: ${parsed.error}`;
    ctx.fillText(note.length > 70 ? `${note.slice(0, 67)}...` : note, x + w / 2, editor.box.y + h / 2, w - 12);
    ctx.restore();
    return;
  }
  const range = editor.range(parsed);
  const r = editor.plotRect();
  ctx.fillStyle = COLORS.plot;
  ctx.fillRect(r.x, r.y, r.w, r.h);
  ctx.lineWidth = 1;
  ctx.textBaseline = "middle";
  ctx.textAlign = "right";
  const strengths = parsed.keyframes.map(([, s]) => s);
  const drawn = [];
  for (const shown of [0, 1, Math.min(...strengths), Math.max(...strengths)].map((v) => Number(v.toFixed(2)))) {
    if (shown < range[0] || shown > range[1]) continue;
    const [, py] = editor.toPixel([0, shown], range);
    if (drawn.some((other) => Math.abs(other - py) < 11)) continue; // no overlapping labels
    drawn.push(py);
    ctx.strokeStyle = shown === 0 || shown === 1 ? COLORS.axis : COLORS.grid;
    ctx.beginPath();
    ctx.moveTo(r.x, py);
    ctx.lineTo(r.x + r.w, py);
    ctx.stroke();
    ctx.fillStyle = COLORS.text;
    ctx.fillText(String(shown), r.x - 4, py);
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (const progress of [0, 0.25, 0.5, 0.75, 1]) {
    const [px] = editor.toPixel([progress, 0], range);
    ctx.strokeStyle = COLORS.grid;
    ctx.beginPath();
    ctx.moveTo(px, r.y);
    ctx.lineTo(px, r.y + r.h);
    ctx.stroke();
    ctx.fillStyle = COLORS.text;
    ctx.fillText(`${progress * 100}%`, px, r.y + r.h + 4);
  }
  ctx.strokeStyle = COLORS.curve;
  ctx.lineWidth = 2;
  ctx.beginPath();
  const columns = Math.max(2, Math.round(r.w));
  for (let c = 0; c <= columns; c++) {
    const progress = c / columns;
    const [px, py] = editor.toPixel([progress, strengthAt(parsed, progress)], range);
    c === 0 ? ctx.moveTo(px, py) : ctx.lineTo(px, py);
  }
  ctx.stroke();
  parsed.keyframes.forEach((keyframe, i) => {
    const [px, py] = editor.toPixel(keyframe, range);
    const active = editor.drag?.index === i || editor.hover === i;
    ctx.fillStyle = active ? COLORS.active : COLORS.point;
    ctx.strokeStyle = COLORS.box;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    ctx.arc(px, py, active ? 6 : 5, 0, 2 * Math.PI);
    ctx.fill();
    ctx.stroke();
    if (active) {
      ctx.fillStyle = COLORS.text;
      ctx.textAlign = keyframe[0] > 0.8 ? "right" : "left";
      ctx.textBaseline = "bottom";
      ctx.fillText(`${Math.round(keyframe[0] * 1000) / 10}%: ${keyframe[1]}`, px + (keyframe[0] > 0.8 ? -8 : 8), py - 6);
    }
  });
  ctx.restore();
}
