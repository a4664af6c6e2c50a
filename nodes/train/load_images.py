"""Loom Load Training Images: a folder of images with kohya-style caption files, for Loom Train LoRA."""

from __future__ import annotations

import os

import folder_paths
import numpy as np
import torch
from comfy_api.latest import io
from PIL import Image, ImageOps

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _folders() -> list[str]:
    root = folder_paths.get_input_directory()
    if not os.path.isdir(root):
        return []
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))


def load_folder(folder: str, caption_extension: str = ".txt") -> tuple[list[torch.Tensor], list[str], list[str]]:
    """(images [1,H,W,3] each at its own size, captions, file names) in file-name order.

    A caption is the text file beside the image (``a.png`` -> ``a.txt``, one line; newlines become spaces), else
    empty (the trainer's caption template then applies).
    """
    if not folder or os.path.isabs(folder) or ".." in folder.replace("\\", "/").split("/"):
        raise ValueError(f"folder: {folder!r} is not a folder inside ComfyUI's input directory")
    path = os.path.join(folder_paths.get_input_directory(), folder)
    if not os.path.isdir(path):
        raise ValueError(
            f"folder: {folder!r} does not exist in ComfyUI's input directory ({folder_paths.get_input_directory()})"
        )
    names = sorted(f for f in os.listdir(path) if f.lower().endswith(EXTENSIONS))
    if not names:
        raise ValueError(f"folder: no images ({', '.join(EXTENSIONS)}) in {folder!r}")
    images, captions = [], []
    for name in names:
        try:
            with Image.open(os.path.join(path, name)) as img:
                rgb = ImageOps.exif_transpose(img).convert("RGB")
        except OSError as e:
            raise ValueError(f"folder: {name} in {folder!r} is not a readable image ({e})") from None
        images.append(torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0)[None])
        text_path = os.path.join(path, os.path.splitext(name)[0] + caption_extension)
        caption = ""
        if os.path.isfile(text_path):
            with open(text_path, encoding="utf-8") as f:
                caption = " ".join(f.read().split())
        captions.append(caption)
    return images, captions, names


class LoomLoadTrainingImages(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoomLoadTrainingImages",
            display_name="Loom Load Training Images",
            category="loom/train",
            description=(
                "Images of any size from a folder in ComfyUI's input directory, with their captions from the text "
                "file beside each image (kohya style: a.png + a.txt), for Loom Train LoRA."
            ),
            inputs=[
                io.Combo.Input("folder", options=_folders(), tooltip="A folder inside ComfyUI's input directory."),
                io.String.Input("caption_extension", default=".txt"),
            ],
            outputs=[
                io.Image.Output("images", display_name="images", is_output_list=True),
                io.String.Output(
                    "captions",
                    display_name="captions",
                    tooltip="One caption per line, in image order; images without a caption file get the trigger "
                    "template '{trigger}'.",
                ),
                io.Int.Output("count", display_name="count"),
            ],
        )

    @classmethod
    def execute(cls, folder: str, caption_extension: str = ".txt") -> io.NodeOutput:
        images, captions, _ = load_folder(folder, caption_extension)
        lines = "\n".join(c if c else "{trigger}" for c in captions)
        return io.NodeOutput(images, lines, len(images))
