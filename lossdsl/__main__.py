"""``python -m lossdsl``: the command line."""

import sys

from .cli import main

if __name__ == "__main__":  # importing the module (pkgutil.walk_packages does) must not run the CLI
    sys.exit(main())
