"""The package version, in a module of its own so the wire formats can read it without
importing ``msicert`` (whose ``__init__`` imports the client: that would be an import cycle)."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
