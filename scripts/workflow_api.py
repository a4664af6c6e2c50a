"""Convert a UI workflow (what ComfyUI saves and users share) into an API prompt (what /prompt runs).

The UI format stores widget values positionally; `/object_info` gives each node's input order, so
the conversion is exact without a browser.
"""

from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
VIRTUAL_NODES = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}


class WorkflowError(ValueError):
    pass


def _is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _link_sources(workflow: dict) -> dict[int, tuple[int, int]]:
    """link id -> (origin node, origin slot), following Reroute nodes to their source."""
    links = {lk[0]: (lk[1], lk[2]) for lk in workflow.get("links", [])}
    nodes = {n["id"]: n for n in workflow["nodes"]}

    def source(link_id):
        origin, slot = links[link_id]
        while nodes[origin]["type"] == "Reroute":
            upstream = nodes[origin]["inputs"][0].get("link")
            if upstream is None:
                raise WorkflowError(f"Reroute node {origin} has no input")
            origin, slot = links[upstream]
        return origin, slot

    return {lid: source(lid) for lid in links}


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    sources = _link_sources(workflow)
    prompt = {}
    for node in workflow["nodes"]:
        ntype = node["type"]
        if ntype in VIRTUAL_NODES:
            continue
        if node.get("mode", 0) != 0:
            raise WorkflowError(
                f"node {node['id']} ({ntype}) is muted or bypassed; the converter runs active nodes only"
            )
        if ntype not in object_info:
            raise WorkflowError(f"node {node['id']} has type {ntype!r}, which this ComfyUI does not have")
        info = object_info[ntype]
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        order = info.get("input_order", {})
        names = order.get("required", []) + order.get("optional", []) if order else list(specs)
        linked = {i["name"]: i.get("link") for i in node.get("inputs", [])}
        values = list(node.get("widgets_values") or [])
        inputs = {}
        for name in names:
            spec = specs[name]
            if _is_widget(spec):
                if values:
                    inputs[name] = values.pop(0)
                    if len(spec) > 1 and isinstance(spec[1], dict) and spec[1].get("control_after_generate"):
                        values.pop(0) if values else None
            if linked.get(name) is not None:
                origin, slot = sources[linked[name]]
                inputs[name] = [str(origin), slot]
        prompt[str(node["id"])] = {"class_type": ntype, "inputs": inputs, "_meta": {"title": node.get("title", ntype)}}
    return prompt
