"""``python -m metalearn ...``: the ``metalearn`` command (also what ``torchrun --nproc_per_node N -m metalearn ...``
starts in every process)."""
import sys

from metalearn.cli import main

if __name__ == "__main__":
    sys.exit(main())
