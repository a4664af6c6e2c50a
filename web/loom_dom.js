// LoRA Loom: DOM helpers shared by the pack's panels and editors. Text goes in with textContent only: names and
// metadata come from arbitrary files. Only definitions here: ComfyUI imports every .js of the pack.

/** Add a <style> once per page: every editor and panel asks for its CSS, the first one adds it. */
export function addStyle(id, css) {
  if (document.getElementById(id)) return;
  const style = document.createElement("style");
  style.id = id;
  style.textContent = css;
  document.head.appendChild(style);
}

/** An element with a class and text (textContent, never markup). */
export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

/** A button that handles its own click: the click does not reach the canvas or the row under it. */
export function button(className, text, title, testid, onClick) {
  const b = el("button", className, text);
  b.type = "button";
  b.title = title;
  b.dataset.testid = testid;
  b.addEventListener("click", (event) => {
    event.stopPropagation();
    onClick(event);
  });
  return b;
}
