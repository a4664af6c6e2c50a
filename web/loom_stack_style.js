// LoRA Loom: sizes and CSS of the stack editor and its LoRA picker. The sizes are here with the CSS because the
// editor computes its node's height from them: the two must agree or rows get cut off.
import { addStyle } from "./loom_dom.js";

export const ROW_HEIGHT = 54; // px per row (two lines)
export const HEAD_HEIGHT = 18;
export const FOOT_HEIGHT = 30;
export const EMPTY_HEIGHT = 34;
export const NOTE_HEIGHT = 36;
export const MARGIN = 6; // the DOM widget's margin on each side

const STYLE = `
.loom-stack { box-sizing: border-box; height: 100%; display: flex; flex-direction: column; gap: 2px;
  font: 12px/1.3 sans-serif; color: var(--input-text, #ddd); overflow: hidden; }
.loom-stack-list { flex: 1; overflow-y: auto; overflow-x: hidden; min-height: 0; }
.loom-stack-head, .loom-stack-line1 { display: grid; align-items: center; column-gap: 4px;
  grid-template-columns: 18px minmax(60px, 1fr) 18px 54px 54px 18px 18px 18px; }
.loom-stack-head { height: ${HEAD_HEIGHT}px; font-size: 10px; opacity: 0.6; padding: 0 4px; }
.loom-stack-head span:nth-child(2) { grid-column: 2 / 4; }
.loom-stack-row { box-sizing: border-box; height: ${ROW_HEIGHT - 2}px; margin-bottom: 2px; padding: 3px 4px;
  border-radius: 4px; background: var(--comfy-input-bg, #222); border: 1px solid transparent; }
.loom-stack-row.loom-off { opacity: 0.5; }
.loom-stack-row:focus-within { border-color: var(--border-color, #4e4e4e); }
.loom-stack-line2 { display: grid; grid-template-columns: 1fr 1fr; column-gap: 4px; margin-top: 3px; }
.loom-stack button { font: inherit; color: inherit; background: var(--comfy-menu-bg, #2b2b2b); cursor: pointer;
  border: 1px solid var(--border-color, #4e4e4e); border-radius: 3px; padding: 0; height: 20px; min-width: 0; }
.loom-stack button:hover:not(:disabled) { filter: brightness(1.3); }
.loom-stack button:disabled { opacity: 0.3; cursor: default; }
.loom-stack input[type=checkbox] { margin: 0; width: 14px; height: 14px; cursor: pointer; }
.loom-stack-name { text-align: left; padding: 0 5px !important; overflow: hidden; white-space: nowrap;
  text-overflow: ellipsis; }
.loom-stack-name.loom-missing { font-style: italic; opacity: 0.7; }
.loom-stack-name.loom-unknown { color: #ffb74d; border-color: #8a6420; }
.loom-stack-folder { opacity: 0.55; }
.loom-stack-info { border-radius: 50% !important; width: 18px; height: 18px !important; font-style: italic;
  font-family: serif !important; font-weight: bold; }
.loom-stack-num { box-sizing: border-box; height: 20px; line-height: 18px; text-align: center; cursor: ew-resize;
  user-select: none; border: 1px solid var(--border-color, #4e4e4e); border-radius: 3px; overflow: hidden;
  background: var(--comfy-menu-bg, #2b2b2b); font-variant-numeric: tabular-nums; }
.loom-stack-num.loom-follows { opacity: 0.55; font-style: italic; }
.loom-stack-num:focus { outline: 1px solid var(--p-primary-color, #6aa0ff); }
.loom-stack-num input, .loom-stack-text { box-sizing: border-box; width: 100%; height: 20px; font: inherit;
  color: inherit; background: var(--comfy-input-bg, #1b1b1b); border: 1px solid var(--border-color, #4e4e4e);
  border-radius: 3px; padding: 0 4px; min-width: 0; }
.loom-stack-num input { border: none; height: 18px; text-align: center; padding: 0; }
.loom-stack-text::placeholder { opacity: 0.45; }
.loom-stack-foot { display: flex; gap: 6px; align-items: center; height: ${FOOT_HEIGHT - 4}px; flex: none; }
.loom-stack-foot button { padding: 0 10px; height: 22px; }
.loom-stack-add { flex: 1; }
.loom-stack-empty { opacity: 0.6; padding: 8px 4px; font-style: italic; }
.loom-stack-note { color: #ffb74d; padding: 2px 4px; overflow: hidden; overflow-wrap: anywhere; font-size: 11px;
  max-height: ${NOTE_HEIGHT - 4}px; flex: none; }
.loom-stack-note[hidden] { display: none; }
.loom-picker { position: fixed; z-index: 10001; width: 360px; max-width: calc(100vw - 16px); box-sizing: border-box;
  display: flex; flex-direction: column; gap: 4px; padding: 6px; border-radius: 6px; font: 12px/1.3 sans-serif;
  background: var(--comfy-menu-bg, #202020); color: var(--fg-color, #ddd); border: 1px solid var(--border-color, #4e4e4e);
  box-shadow: 0 6px 24px rgba(0, 0, 0, 0.5); }
.loom-picker[hidden] { display: none; }
.loom-picker-filter { box-sizing: border-box; width: 100%; height: 24px; font: inherit; color: inherit; padding: 0 6px;
  background: var(--comfy-input-bg, #1b1b1b); border: 1px solid var(--border-color, #4e4e4e); border-radius: 3px; }
.loom-picker-list { max-height: 300px; overflow-y: auto; }
.loom-picker-item { padding: 3px 6px; border-radius: 3px; cursor: pointer; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }
.loom-picker-item.loom-active { background: var(--comfy-input-bg, #333); }
.loom-picker-item.loom-current { font-weight: bold; }
.loom-picker-count { font-size: 10px; opacity: 0.6; }
`;

export function addStackStyle() {
  addStyle("loom-stack-style", STYLE);
}
