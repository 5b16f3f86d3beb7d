"""``python -m msicert.emulator [--host H] [--port P] [--lifetime SECONDS]``."""

from __future__ import annotations

import argparse
import logging

from ._server import serve


def main() -> None:
    """Parse the few options and run :func:`serve` in the foreground."""
    parser = argparse.ArgumentParser(prog="python -m msicert.emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="IMDS port (0 = any free port)")
    parser.add_argument("--lifetime", type=float, default=604800.0, help="certificate seconds")
    parser.add_argument("-v", "--verbose", action="store_true", help="log requests to stderr")
    args = parser.parse_args()
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG)
    serve(host=args.host, port=args.port, lifetime=args.lifetime)


if __name__ == "__main__":
    main()
