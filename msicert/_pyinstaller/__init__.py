"""PyInstaller integration: the hooks that freeze ``msicert`` and ``msicert_native`` correctly.

PyInstaller finds this directory through the ``pyinstaller40`` entry point ``hook-dirs``
declared in ``pyproject.toml``; nothing here is imported by ``msicert`` itself at run time.
"""

from __future__ import annotations

import os

__all__ = ["get_hook_dirs"]


def get_hook_dirs() -> list[str]:
    """Return the directories that hold msicert's PyInstaller hooks (``hook-*.py``)."""
    return [os.path.dirname(os.path.abspath(__file__))]
