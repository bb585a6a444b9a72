"""User-facing errors.

Every error a user can cause (a bad file, a bad flag, an impossible setting) is a
``KvrunError`` whose message is one line that says what is wrong and what to do.
The CLI prints it and exits with status 2; it never shows a traceback.
"""

from __future__ import annotations


class KvrunError(Exception):
    """An error caused by input the user can fix; its message is one line."""


class GGUFError(KvrunError):
    """The file is not a readable GGUF model (missing, foreign, truncated, unknown type)."""


class UnsupportedModelError(KvrunError):
    """The GGUF is valid but names an architecture or tensor type kvrun cannot run."""
