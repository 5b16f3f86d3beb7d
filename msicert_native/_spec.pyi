# Type stub for the generated msicert_native/_spec.py (cdefs/build_ffi.py, from cdefs/*.cdef).
# The real module exists only after generation; this stub lets mypy check the backends without it.
from typing import Final

TYPEDEFS: Final[dict[str, str]]
STRUCTS: Final[dict[str, tuple[tuple[str, str], ...]]]
FUNCTIONS: Final[dict[str, tuple[str, str, tuple[str, ...]]]]
