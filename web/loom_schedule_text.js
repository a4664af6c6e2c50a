// LoRA Loom: the strength-schedule text form in the browser, for the curve editor (loom_schedule_editor.js).
// A subset of lora_math/schedule/text.py: progress positions (0.4, 40%), strengths, hold/linear/smooth modes and their
// aliases, a mode prefix ("smooth: 0:0, 1:1"), a lone number (constant) and the single-schedule presets. Step
// positions (@3) are recognised but not editable here. scheduleToText writes exactly what Schedule.to_text writes.
// No imports and no side effects: ComfyUI imports every .js of the pack, and tests run this file under Node.

export const MODES = ["hold", "linear", "smooth"];
const MODE_ALIASES = { hold: "hold", linear: "linear", lin: "linear", smooth: "smooth", cosine: "smooth", cos: "smooth", ease: "smooth" };

// The node's preset choices as canonical text (nodes/schedule_node.py preset_schedule(name).to_text(); a test checks).
export const PRESET_TEXT = {
  "constant": "0:1",
  "fade_in": "0:0, 1:1",
  "fade_out": "0:1, 1:0",
  "late_only": "hold: 0:0, 0.5:1",
  "early_only": "hold: 0:1, 0.5:0",
  "pulse": "smooth: 0.25:0, 0.5:1, 0.75:0",
  "cross_fade_a": "0:1, 1:0",
  "cross_fade_b": "0:0, 1:1"
};
// Preset names the text itself may be (lora_math.schedule.PRESETS without cross_fade, which makes two schedules).
const TEXT_PRESETS = ["fade_in", "fade_out", "late_only", "early_only", "pulse"];

const NUMBER = /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/;
const NONFINITE = /^[+-]?(nan|inf|infinity)$/i;
const WORD_PREFIX = /^([A-Za-z_][\w-]*)\s*:/;
const WORD = /^[A-Za-z_][\w -]*$/;

function number(raw, what) {
  raw = raw.trim();
  if (!NUMBER.test(raw)) throw new Error(`${what} '${raw}' is not a number`);
  const value = Number(raw);
  if (!Number.isFinite(value)) throw new Error(`${what} '${raw}' is too large`);
  return value;
}

function mode(word) {
  const m = MODE_ALIASES[word.toLowerCase()];
  if (!m) throw new Error(`'${word}' is not an interpolation (hold, linear, smooth)`);
  return m;
}

// "40" with a percent sign -> 0.4, rounded as Python's Decimal(body) / 100 is: the double nearest the exact value.
function percent(body) {
  const m = NUMBER.exec(body.trim());
  if (!m) throw new Error(`percent '${body.trim()}' is not a number`);
  const [mantissa, exponent = "0"] = body.trim().toLowerCase().split("e");
  const value = Number(`${mantissa}e${Number(exponent) - 2}`);
  if (!(value >= 0 && value <= 1)) throw new Error(`position ${body.trim()}% is outside 0%..100%`);
  return value;
}

/**
 * Parse a schedule text. Returns {keyframes: [[position, strength], ...], modes: [mode per segment]} for an
 * editable progress schedule, {steps: true} for one with step positions (@k), or {error: "message"}.
 */
export function parseSchedule(text) {
  try {
    return parseOrThrow(String(text ?? ""));
  } catch (e) {
    if (e && e.steps) return { steps: true };
    return { error: e instanceof Error ? e.message : String(e) };
  }
}

function parseOrThrow(text) {
  const stripped = text.trim();
  if (!stripped) throw new Error("empty");
  if (NUMBER.test(stripped)) return { keyframes: [[0, number(stripped, "strength")]], modes: [] };
  if (NONFINITE.test(stripped)) throw new Error(`strength '${stripped}' is not a finite number`);
  if (WORD.test(stripped)) {
    const key = stripped.toLowerCase().replace(/[\s-]+/g, "_");
    if (!TEXT_PRESETS.includes(key)) throw new Error(`'${stripped}' is not a preset`);
    return parseOrThrow(PRESET_TEXT[key]);
  }
  let body = stripped;
  let defaultMode = "linear";
  const prefix = WORD_PREFIX.exec(stripped);
  if (prefix && !NONFINITE.test(prefix[1])) {
    defaultMode = mode(prefix[1]);
    body = stripped.slice(prefix[0].length);
  }
  const tokens = body.split(/[,;\n]/).map((t) => t.trim()).filter((t) => t);
  if (!tokens.length) throw new Error("no keyframes");
  const keyframes = [];
  const segmentModes = [];
  for (const token of tokens) {
    if (token.includes("|")) throw new Error("'|' separates blocks; use the blocks input");
    const colon = token.indexOf(":");
    if (colon < 0) throw new Error(`'${token}': expected POSITION:STRENGTH`);
    const rawPosition = token.slice(0, colon).trim();
    const rest = token.slice(colon + 1);
    const words = rest.split(/\s+/).filter((w) => w);
    if (rest.includes(":") || words.length > 2) throw new Error(`'${token}': one strength and at most one mode`);
    if (rawPosition.startsWith("@")) throw Object.assign(new Error("step positions"), { steps: true });
    if (!rawPosition) throw new Error(`'${token}': no position`);
    const position = rawPosition.endsWith("%") ? percent(rawPosition.slice(0, -1)) : number(rawPosition, "position");
    if (!(position >= 0 && position <= 1)) throw new Error(`position ${rawPosition} is outside 0..1`);
    if (!words.length) throw new Error(`'${token}': no strength`);
    const strength = number(words[0], "strength");
    if (keyframes.length && position <= keyframes[keyframes.length - 1][0]) {
      throw new Error(`position ${rawPosition} does not increase`);
    }
    keyframes.push([position, strength]);
    segmentModes.push(words.length === 2 ? mode(words[1]) : null);
  }
  if (segmentModes[segmentModes.length - 1] !== null) throw new Error("a mode after the last keyframe");
  return { keyframes, modes: segmentModes.slice(0, -1).map((m) => m ?? defaultMode) };
}

/** Python's repr of a float (what lora_math.schedule._fmt writes): "1" for 1.0, "1e-05", "0.1", "1e+16". */
export function formatNumber(value) {
  if (Object.is(value, -0)) value = 0;
  if (Number.isInteger(value) && Math.abs(value) < 1e15) return String(value);
  const [mantissa, exponentText] = value.toExponential().split("e");
  const exponent = Number(exponentText);
  if (exponent < -4 || exponent >= 16) {
    return `${mantissa}e${exponent < 0 ? "-" : "+"}${String(Math.abs(exponent)).padStart(2, "0")}`;
  }
  const sign = value < 0 ? "-" : "";
  const digits = mantissa.replace("-", "").replace(".", "");
  if (exponent < 0) return `${sign}0.${"0".repeat(-exponent - 1)}${digits}`;
  const whole = digits.slice(0, exponent + 1).padEnd(exponent + 1, "0");
  return `${sign}${whole}.${digits.slice(exponent + 1) || "0"}`;
}

/** The most common mode (ties: linear, else the first to appear), as Schedule.to_text chooses the prefix. */
export function mainMode(modes) {
  const counts = { hold: 0, linear: 0, smooth: 0 };
  for (const m of modes) counts[m] += 1;
  const best = Math.max(0, ...Object.values(counts));
  if (counts.linear === best) return "linear";
  return modes.find((m) => counts[m] === best);
}

/** The canonical text of {keyframes, modes}: the same string lora_math's Schedule.to_text writes. */
export function scheduleToText({ keyframes, modes }) {
  const main = mainMode(modes);
  const parts = keyframes.map(([position, strength], i) => {
    let part = `${formatNumber(position)}:${formatNumber(strength)}`;
    if (i < modes.length && modes[i] !== main) part += ` ${modes[i]}`;
    return part;
  });
  return (main === "linear" ? "" : `${main}: `) + parts.join(", ");
}

/** The strength at progress (Schedule.at): hold keeps the segment's first strength, smooth is a cosine ease. */
export function strengthAt({ keyframes, modes }, progress) {
  const first = keyframes[0];
  const last = keyframes[keyframes.length - 1];
  if (progress <= first[0]) return first[1];
  if (progress >= last[0]) return last[1];
  let i = 0;
  while (keyframes[i + 1][0] <= progress) i += 1;
  const [p0, s0] = keyframes[i];
  const [p1, s1] = keyframes[i + 1];
  if (modes[i] === "hold") return s0;
  let t = (progress - p0) / (p1 - p0);
  if (modes[i] === "smooth") t = (1 - Math.cos(Math.PI * t)) / 2;
  return s0 + (s1 - s0) * t;
}
