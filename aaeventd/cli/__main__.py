"""``python -m aaeventd.cli``: the same entry point as the ``aaeventd`` script."""

from __future__ import annotations

import sys

from aaeventd.cli import main

if __name__ == "__main__":
    sys.exit(main())
