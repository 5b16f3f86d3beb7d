"""Local IMDS v2 + ESTS emulator (filled in by the emulator module)."""
