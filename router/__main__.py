"""``python -m router``: the same as the ``pgrouter`` command."""

import sys

from router.cli import main

sys.exit(main())
