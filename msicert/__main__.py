"""``python -m msicert``."""

from ._cli import main

raise SystemExit(main())
