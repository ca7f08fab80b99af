"""`python -m sim ...`, the same as `tracking sim ...`."""

import sys

from sim.cli import main

if __name__ == "__main__":  # spawned simulator processes import this module too
    sys.exit(main())
