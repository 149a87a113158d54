"""``python -m helpers.grade SUBMISSIONS --out OUT [--jobs N] [--learner NAME …] [--notebook NN …]``.

The command ``make grade`` runs. The grader itself is the package :mod:`helpers.grading` (its ``__init__`` maps
its modules); this module is only the entry point the Makefile, the instructor guide and habits know.
"""

from helpers import server
from helpers.grading.cli import main

if __name__ == "__main__":
    server.exit_now(main())
