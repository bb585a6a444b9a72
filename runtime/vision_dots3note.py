"""dots.note's pictures in the prompt (projector type "dots3note_v"), as llama.cpp's libmtmd lays them out: dots.ocr's
layout (runtime/vision_dotsocr.py; mtmd.cpp takes the two types in one case), the picture's merged blocks' rows in
raster order between ``<|img|>`` and ``<|endofimg|>``, one position a row, read by dots.note's text model
(models/dots3note.py, its rows through ``Model.input_embd``).

The markers are tokenized with the text around them (special tokens parsed), as libmtmd does; kvrun does not require
them to be single tokens (libmtmd does not), so a text model only has to be dots.note's: another is refused in one line.
"""

from __future__ import annotations

from typing import Any

from ..models.dots3note_image import Dots3NoteVisionEncoder
from .vision_dotsocr import IMAGE_END, IMAGE_START, DotsOCRLayout
from .vision_markers import require_arch

__all__ = ["IMAGE_END", "IMAGE_START", "Dots3NoteLayout"]


class Dots3NoteLayout(DotsOCRLayout):
    """dots.ocr's layout of a picture, beside a ``dots3note`` text model."""

    def __init__(self, engine: Any, encoder: Dots3NoteVisionEncoder) -> None:
        require_arch(engine, ("dots3note",), "a dots3note_v projector goes with a dots.note text model (dots3note)", takes_images=True)
        self.engine, self.encoder = engine, encoder
