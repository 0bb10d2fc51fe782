"""`python -m eqx_attr`: the command line (see `python -m eqx_attr --help`)."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
