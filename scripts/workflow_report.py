"""What run_workflow.py prints: refusals and node errors by node title, execution errors, live progress."""

from __future__ import annotations

import sys


def node_label(prompt: dict, node_id) -> str:
    node = prompt.get(str(node_id))
    if node is None:
        return f"node {node_id}"
    title = (node.get("_meta") or {}).get("title")
    label = f"node {node_id} {node['class_type']}"
    return label + (f' "{title}"' if title and title != node["class_type"] else "")


def short(text, limit: int = 400) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_node_errors(prompt: dict, node_errors: dict) -> list[str]:
    lines = []
    for node_id, entry in node_errors.items():
        label = node_label(prompt, node_id)
        if label == f"node {node_id}" and entry.get("class_type"):
            label += f" {entry['class_type']}"
        for err in entry.get("errors", []):
            input_name = (err.get("extra_info") or {}).get("input_name")
            message, details = err.get("message", ""), err.get("details", "")
            where = f" input {input_name!r}" if input_name and input_name not in str(details) else ""
            text = f"{message}: {details}" if details and details != message else message
            lines.append(f"  {label}{where}: {short(text)}")
    return lines


def report_refusal(prompt: dict, body) -> str:
    if not isinstance(body, dict):
        return f"the server refused the workflow: {short(body)}"
    err = body.get("error") or {}
    head = err.get("message", "refused") if isinstance(err, dict) else str(err)
    details = err.get("details") if isinstance(err, dict) else ""
    lines = [f"the server refused the workflow: {head}" + (f" ({short(details)})" if details else "")]
    lines += format_node_errors(prompt, body.get("node_errors") or {})
    return "\n".join(lines)


def execution_error_text(prompt: dict, data: dict, verbose: bool = False) -> str:
    label = node_label(prompt, data.get("node_id"))
    if data.get("node_type") and data.get("node_type") not in label:
        label += f" ({data['node_type']})"
    text = f"{label} failed: {data.get('exception_type', 'error')}: {data.get('exception_message', '').strip()}"
    if verbose and data.get("traceback"):
        text += "\n" + "".join(data["traceback"]).rstrip()
    return text


class Progress:
    """Node starts, step bars (in place on a terminal, every 10 % otherwise) and progress text."""

    def __init__(self, prompt: dict, stream=sys.stdout):
        self.prompt, self.out = prompt, stream
        self.tty = stream.isatty()
        self.bar_open = False  # a \r line is on screen
        self.text = ""  # latest progress text of the running node
        self.pending = None  # (value, max) due to print (non-tty) once its text arrives
        self.last_decile = -1
        self.last = None  # (value, max) of the latest step

    def _line(self, text: str) -> None:
        self.flush()
        if self.bar_open:
            self.out.write("\n")
            self.bar_open = False
        self.out.write(text + "\n")
        self.out.flush()

    def _bar(self, value: int, maximum: int) -> str:
        frac = value / maximum if maximum else 1.0
        filled = int(frac * 24)
        tail = f"  {self.text}" if self.text else ""
        return f"    [{'#' * filled}{'.' * (24 - filled)}] {value}/{maximum} {frac:4.0%}{tail}"

    def node_start(self, node_id) -> None:
        self.text, self.last_decile, self.last = "", -1, None
        self._line(f"  {node_label(self.prompt, node_id)}")

    def step(self, value: int, maximum: int) -> None:
        self.last = (value, maximum)
        if self.tty:
            self.out.write("\r" + self._bar(value, maximum) + "\x1b[K")
            self.out.flush()
            self.bar_open = True
            return
        decile = int(10 * value / maximum) if maximum else 10
        if decile != self.last_decile or value == maximum:
            self.flush()
            self.last_decile = decile
            self.pending = (value, maximum)

    def progress_text(self, text: str) -> None:
        self.text = text.strip().replace("\n", " ")
        if self.tty:
            if self.bar_open and self.last:
                self.out.write("\r" + self._bar(*self.last) + "\x1b[K")
                self.out.flush()
            else:
                self._line(f"    {self.text}")
        elif self.pending is not None:  # otherwise shown with the next 10 % step
            self.flush()

    def flush(self) -> None:
        if self.pending is not None:
            value, maximum = self.pending
            self.pending = None
            self.out.write(self._bar(value, maximum) + "\n")
            self.out.flush()

    def note(self, text: str) -> None:
        self._line(text)

    def close(self) -> None:
        self.flush()
        if self.bar_open:
            self.out.write("\n")
            self.bar_open = False
        self.out.flush()
