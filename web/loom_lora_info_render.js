// LoRA Loom: the body of the LoRA info panel, built from a GET /loom/lora_info answer (nodes/web_routes.py). The
// metadata is data from arbitrary files: text goes in with textContent only, never innerHTML, so markup in a file
// shows as text.
import { el } from "./loom_dom.js";

function formatValue(value) {
  if (value === null || value === undefined) return "n/a";
  if (Array.isArray(value)) return value.join(", ");
  return String(value);
}

function formatBytes(bytes) {
  if (!Number.isFinite(bytes)) return "n/a";
  const units = ["B", "KiB", "MiB", "GiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) [value, unit] = [value / 1024, unit + 1];
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}

function definitionList(pairs, className) {
  const dl = el("dl", className);
  for (const [label, value, testid] of pairs) {
    const dd = el("dd");
    if (value instanceof Node) dd.appendChild(value);
    else dd.textContent = String(value ?? "n/a");
    if (testid) dd.dataset.testid = testid;
    dl.append(el("dt", null, label), dd);
  }
  return dl;
}

/** The header view's sections (the same rows Loom LoRA Info and `inspect` show), each a heading and a list. */
function renderSections(header) {
  const body = document.createDocumentFragment();
  for (const section of header?.sections ?? []) {
    const heading = el("div", "loom-info-section", section.title);
    heading.dataset.testid = "loom-lora-info-section";
    const list = definitionList(section.rows.map((row) => [row.label, row.value]), "loom-info-rows");
    list.dataset.section = section.title;
    // which header keys a row comes from, on hover: the labels are readable names, the keys are what tools grep for
    list.querySelectorAll("dt").forEach((dt, i) => (dt.title = section.rows[i].keys.join(", ")));
    body.append(heading, list);
  }
  if (header?.truncated?.length) {
    body.appendChild(el("div", "loom-info-note", `cut to 4000 characters: ${header.truncated.join(", ")}`));
  }
  return body;
}

/** The panel body for a route answer (DOM nodes, text only). */
export function renderInfo(info) {
  const body = document.createDocumentFragment();
  const words = el("span");
  if (info.trigger_words?.length) {
    for (const word of info.trigger_words) {
      const chip = el("span", "loom-info-word", word);
      chip.title = "click to copy";
      chip.dataset.testid = "loom-lora-info-word";
      chip.addEventListener("click", (event) => {
        event.stopPropagation();
        navigator.clipboard?.writeText(word).catch(() => {});
      });
      words.appendChild(chip);
    }
  } else {
    words.appendChild(el("span", "loom-info-note", "none found"));
  }
  const summary = [
    ["format", info.format, "loom-lora-info-format"],
    ["base model", info.base_model, "loom-lora-info-base"],
    ["rank / alpha", info.rank_alpha ?? `${formatValue(info.rank)} / ${formatValue(info.alpha)}`, "loom-lora-info-rank"],
    ["modules", info.ignored_keys ? `${info.modules} (${info.ignored_keys} keys ignored)` : info.modules],
    ["file size", formatBytes(info.file_size)],
  ];
  if (info.header?.writer) summary.push(["written by", info.header.writer, "loom-lora-info-writer"]);
  summary.push(["trigger words", words, "loom-lora-info-words"]);
  body.appendChild(definitionList(summary));
  body.appendChild(renderSections(info.header));
  const keys = Object.keys(info.metadata ?? {});
  const details = el("details", "loom-info-details");
  details.dataset.testid = "loom-lora-info-metadata";
  details.appendChild(el("summary", null, keys.length ? `raw header (${keys.length} keys)` : "raw header (none)"));
  if (keys.length) {
    details.appendChild(definitionList(keys.map((key) => [key, info.metadata[key]]), "loom-info-meta"));
    if (info.metadata_truncated?.length) {
      details.appendChild(el("div", "loom-info-note", `cut to 4000 characters: ${info.metadata_truncated.join(", ")}`));
    }
  }
  body.appendChild(details);
  return body;
}
