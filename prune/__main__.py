"""``python -m prune``: see ``prune.cli``."""

import sys

from prune.cli import main

if __name__ == "__main__":
    sys.exit(main())
