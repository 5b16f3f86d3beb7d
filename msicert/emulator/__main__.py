"""``python -m msicert.emulator [--host H] [--port P] [--lifetime S] [--backdate S]``."""

from __future__ import annotations

import argparse
import logging
import sys

from ._server import EmulatorOptionError, serve


def main(argv: list[str] | None = None) -> int:
    """Parse the few options and run :func:`serve` in the foreground; 2 on a bad option."""
    parser = argparse.ArgumentParser(prog="python -m msicert.emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="IMDS port (0 = any free port)")
    parser.add_argument("--lifetime", type=float, default=604800.0, help="certificate seconds")
    parser.add_argument("--backdate", type=float, default=60.0,
                        help="seconds NotBefore lies before issuance (default 60)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log requests to stderr")
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG)
    try:
        serve(host=args.host, port=args.port, lifetime=args.lifetime, backdate=args.backdate)
    except EmulatorOptionError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
