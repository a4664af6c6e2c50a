// LoRA Loom: the pure parts of the stack row editor (loom_stack_editor.js and the modules it uses). No imports and
// no side effects: ComfyUI imports every .js of the pack, and Node can run this.
//
// The stack's `rows` widget holds JSON (nodes/stack.py): [{"name", "on", "model", "clip", "blocks", "schedule"}].
// parseRows reads it the way stack.parse_rows does (shape only: names and texts are checked by the server), keeping
// keys the editor does not know and leaving out keys a row does not have (no "clip" means "same as model").
// rowsToText writes one row per line, known keys first in ROW_KEYS order, so the text stays readable and diffs well.

export const ROW_KEYS = ["name", "on", "model", "clip", "blocks", "schedule"];

function kind(value) {
  if (Array.isArray(value)) return "a list";
  if (value === null) return "null";
  return { object: "an object", string: "a string", boolean: "a boolean", number: "a number" }[typeof value] ?? typeof value;
}

/** {rows: [...]} from the widget text, or {error: "rows: ..."}; empty text is no rows. */
export function parseRows(text) {
  const source = String(text ?? "");
  if (!source.trim()) return { rows: [] };
  let data;
  try {
    data = JSON.parse(source);
  } catch (e) {
    return { error: `rows: not valid JSON (${e.message})` };
  }
  if (!Array.isArray(data)) return { error: `rows: expected a JSON list of rows, found ${kind(data)}` };
  const rows = [];
  for (const [i, row] of data.entries()) {
    if (row === null || typeof row !== "object" || Array.isArray(row)) {
      return { error: `rows: row ${i + 1}: expected an object like {"name": "a.safetensors"}, found ${kind(row)}` };
    }
    rows.push({ ...row });
  }
  return { rows };
}

function orderedRow(row) {
  const out = {};
  for (const key of ROW_KEYS) {
    if (row[key] === undefined) continue;
    if ((key === "blocks" || key === "schedule") && row[key] === "") continue; // optional texts: absent when empty
    out[key] = row[key];
  }
  for (const [key, value] of Object.entries(row)) {
    if (value !== undefined && !(key in out) && !ROW_KEYS.includes(key)) out[key] = value;
  }
  return out;
}

/** The rows as the widget's text: "[]" or one row per line. */
export function rowsToText(rows) {
  if (!rows.length) return "[]";
  const line = (row) =>
    `{${Object.entries(orderedRow(row))
      .map(([key, value]) => `${JSON.stringify(key)}: ${JSON.stringify(value)}`)
      .join(", ")}}`;
  return `[\n${rows.map((row) => `  ${line(row)}`).join(",\n")}\n]`;
}

/** A new row for a LoRA name, with the node's defaults written out. */
export function newRow(name, model = 1.0, clip = 1.0) {
  return { name: String(name ?? ""), on: true, model, clip };
}

export const isOn = (row) => row.on !== false;
export const strength = (value, fallback) => (typeof value === "number" && Number.isFinite(value) ? value : fallback);
export const modelStrength = (row) => strength(row.model, 1.0);
/** The clip strength a row applies: its own, or its model strength when it has none (stack.py's default). */
export const clipStrength = (row) => strength(row.clip, modelStrength(row));

/** A strength rounded for storing: at most 4 decimals, no -0. */
export function roundStrength(value) {
  const rounded = Math.round(value * 10000) / 10000;
  return Object.is(rounded, -0) ? 0 : rounded;
}

/** Short text of a strength for display. */
export function formatStrength(value) {
  const rounded = roundStrength(value);
  return Number.isInteger(rounded) ? rounded.toFixed(1) : String(rounded);
}

/** Move item `from` to index `to` (clamped); returns a new array. */
export function moveItem(items, from, to) {
  const out = [...items];
  if (from < 0 || from >= out.length) return out;
  const target = Math.max(0, Math.min(out.length - 1, to));
  const [item] = out.splice(from, 1);
  out.splice(target, 0, item);
  return out;
}

/** {folder, file} of a LoRA name as ComfyUI lists it ("style/anime/a.safetensors" -> "style/anime/", "a.safetensors"). */
export function splitName(name) {
  const text = String(name ?? "").replace(/\\/g, "/");
  const cut = text.lastIndexOf("/");
  return cut < 0 ? { folder: "", file: text } : { folder: text.slice(0, cut + 1), file: text.slice(cut + 1) };
}

/** Names matching a filter: every space-separated term appears in the path (case-insensitive), "/" matches "\". */
export function filterNames(names, filter) {
  const terms = String(filter ?? "").toLowerCase().replace(/\\/g, "/").split(/\s+/).filter(Boolean);
  if (!terms.length) return [...names];
  return names.filter((name) => {
    const text = String(name).toLowerCase().replace(/\\/g, "/");
    return terms.every((term) => text.includes(term));
  });
}

