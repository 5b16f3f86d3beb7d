# Type stub for the generated msicert_native/_ffi.py (cdefs/build_ffi.py, cffi ABI mode).
# The real module exists only after generation; this stub lets mypy check _cffi_impl without it.
from typing import Any

ffi: Any
