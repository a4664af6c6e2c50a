// LoRA Loom: the trainer's loss series, for the chart in loom_train_view.js. No imports and no side effects: ComfyUI
// imports every .js of the pack, and Node can run this.

const LOSS_TEXT = /step\s+(\d+)\s*\/\s*(\d+)\s+loss\s+([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|[-+]?inf)/i;

/** {step, steps, loss} from the trainer's progress text "step N/M  loss X" (nodes/train.py), or null. */
export function parseLossText(text) {
  const m = LOSS_TEXT.exec(String(text ?? ""));
  if (!m) return null;
  const raw = m[3].toLowerCase();
  const loss = raw === "nan" ? NaN : raw.endsWith("inf") ? (raw.startsWith("-") ? -Infinity : Infinity) : Number(raw);
  return { step: Number(m[1]), steps: Number(m[2]), loss };
}

/** Exponential moving average of the finite values (NaN where none yet), bias-corrected like Adam's. */
export function smooth(values, beta = 0.9) {
  const out = [];
  let average = 0;
  let count = 0;
  for (const value of values) {
    if (Number.isFinite(value)) {
      count += 1;
      average = beta * average + (1 - beta) * value;
    }
    out.push(count ? average / (1 - beta ** count) : NaN);
  }
  return out;
}

/** A loss as short text: 4 significant digits, exponent form when very small or large. */
export function formatLoss(value) {
  if (!Number.isFinite(value)) return String(value);
  const abs = Math.abs(value);
  return abs !== 0 && (abs < 1e-3 || abs >= 1e4) ? value.toExponential(2) : value.toPrecision(4);
}

