"""Module discovery shared by the hooks, without importing the packages it lists.

The hooks run inside PyInstaller's build process. Listing modules from the file system keeps
that process from importing ``msicert_native`` (Windows-only at run time) or cryptography, and
keeps the hooks free of any dependency on PyInstaller's own helper API.
"""

from __future__ import annotations

import os
import pkgutil

__all__ = ["PACKAGE_ROOT", "submodules"]

#: The directory that holds the ``msicert`` and ``msicert_native`` packages (site-packages).
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def submodules(package: str, *, skip: tuple[str, ...] = ()) -> list[str]:
    """Return ``package`` and every module below it, found on disk under ``PACKAGE_ROOT``.

    Names equal to an entry of ``skip``, or below one, are left out, and so are ``__main__``
    modules (``python -m`` entry scripts that nothing imports).
    """
    found: list[str] = []

    def skipped(name: str) -> bool:
        return name.endswith(".__main__") or any(
            name == s or name.startswith(s + ".") for s in skip
        )

    def walk(name: str, directory: str) -> None:
        if skipped(name):
            return
        found.append(name)
        for info in pkgutil.iter_modules([directory]):
            child = f"{name}.{info.name}"
            if info.ispkg:
                walk(child, os.path.join(directory, info.name))
            elif not skipped(child):
                found.append(child)

    directory = os.path.join(PACKAGE_ROOT, *package.split("."))
    if os.path.isdir(directory):
        walk(package, directory)
    return sorted(found)
