"""``python -m medad ...`` (also ``torchrun --nproc_per_node N -m medad score ...``): the ``medad`` command line."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
