"""HTTP routes for the pack's web extensions, on ComfyUI's own server.

``GET /loom/lora_info?name=<lora name>`` (also under ``/api``): what a LoRA file is, as JSON, for the info panel of
the stack editor and the loader::

    {"name": "style/a.safetensors", "format": "kohya", "base_model": "sd15", "rank": 16, "alpha": 8.0,
     "rank_alpha": "rank 16, alpha 8", "modules": 192, "ignored_keys": 0, "file_size": 9437184,
     "trigger_words": ["loomtok"],
     "header": {"writer": "kohya-ss/sd-scripts (commit 8eb60baf3a)", "trigger_words": ["loomtok"],
                "sections": [{"title": "about", "rows": [{"label": "title", "value": "a",
                                                          "keys": ["modelspec.title"]}, ...]}, ...],
                "truncated": []},
     "metadata": {"ss_network_dim": "16", "modelspec.title": "a", "format": "pt", ...},
     "metadata_truncated": []}

``rank``/``alpha``: one number, a sorted list when modules differ, or null. ``header``: the header metadata as
``lora_math.report.header_view`` gives it to the Loom LoRA Info node and ``inspect`` too (every key, in sections, the
writer, trigger words). ``metadata``: every header key with the string the file holds, each cut to
:data:`MAX_VALUE_CHARS` (names of cut keys in ``metadata_truncated``). Values are data, never markup: the web panel
renders them with ``textContent``.

Names are LoRA names as ComfyUI lists them (paths relative to a ``loras`` folder), checked as the stack's rows are
and resolved by ``lora_files`` exactly as the loader does. Errors are JSON ``{"error": "name: ..."}``: 400 for a
missing, absolute or ``..`` name, 404 for a name in no ``loras`` folder, 422 for a file that is not a usable LoRA.

:func:`register` adds the route when ComfyUI's server is running (it is called while the pack's node list is built,
before ComfyUI mounts the route table); without a ``PromptServer`` (in-process tests, scripts) it does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from ..lora_math import report
from ..lora_math.names import families
from ..lora_math.stack import check_name
from .files import lora_files
from .load.info import rank_alpha_text

log = logging.getLogger("lora_loom")

ROUTE = "/loom/lora_info"
MAX_VALUE_CHARS = report.MAX_VALUE_CHARS  # the view's cut: ss_tag_frequency and modelspec.thumbnail can be megabytes

_registered = False


class RouteError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _cut(value: str) -> tuple[str, bool]:
    if len(value) <= MAX_VALUE_CHARS:
        return value, False
    return value[: MAX_VALUE_CHARS - 1] + "\u2026", True


def lora_info(name: str | None) -> dict:
    """The info of one LoRA by name; raises :class:`RouteError` with the HTTP status and a message naming ``name``."""
    if name is None or not name.strip():
        raise RouteError(400, "name: missing; give a LoRA name from the `loras` list, e.g. ?name=style.safetensors")
    try:
        check_name(name, "name")
    except ValueError as e:
        raise RouteError(400, str(e)) from None
    try:
        path = lora_files.resolve(name, "name")
    except ValueError as e:
        raise RouteError(404, str(e)) from None
    try:
        parsed = lora_files.load(name, "name")
    except ValueError as e:  # refused by lora_math (pickle, corrupt, unknown format): the message says why
        raise RouteError(422, " ".join(str(e).split())) from None
    except OSError as e:
        raise RouteError(404, f"name: cannot read LoRA {name!r}: {e.strerror or e}") from None
    rank, alpha = report.rank_alpha(parsed)
    view = report.header_view(parsed.metadata)
    metadata, truncated = {}, []
    for key in sorted(parsed.metadata):
        metadata[key], cut = _cut(str(parsed.metadata[key]))
        if cut:
            truncated.append(key)
    return {
        "name": name,
        "format": parsed.format,
        "base_model": families.from_file(parsed),
        "rank": rank,
        "alpha": alpha,
        "rank_alpha": rank_alpha_text(parsed),
        "modules": len(parsed.modules),
        "ignored_keys": len(parsed.ignored),
        "file_size": os.path.getsize(path),
        "trigger_words": list(view.trigger_words),
        "header": view.to_json(),
        "metadata": metadata,
        "metadata_truncated": truncated,
    }


async def handle_lora_info(request):
    from aiohttp import web

    name = request.rel_url.query.get("name")
    try:
        # Parsing reads the whole file: off the event loop, so the server keeps answering meanwhile.
        body = await asyncio.get_running_loop().run_in_executor(None, lora_info, name)
    except RouteError as e:
        return web.json_response({"error": str(e)}, status=e.status)
    return web.json_response(body)


def _prompt_server():
    """ComfyUI's running PromptServer, or None. Never imports ``server``: in-process tests have none running."""
    server = sys.modules.get("server")
    return getattr(getattr(server, "PromptServer", None), "instance", None)


def register() -> bool:
    """Add the routes to ComfyUI's route table (once); False when no ComfyUI server is running in this process."""
    global _registered
    if _registered:
        return True
    instance = _prompt_server()
    routes = getattr(instance, "routes", None)
    if routes is None:
        return False
    routes.get(ROUTE)(handle_lora_info)
    _registered = True
    log.debug("[LoRA Loom] web route %s registered", ROUTE)
    return True
