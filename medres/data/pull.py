"""``python -m medres.data.pull``: see :mod:`medres.data.pacs.pull`."""

from __future__ import annotations

import sys

from medres.data.pacs.pull import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
