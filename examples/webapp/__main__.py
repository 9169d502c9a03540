"""``python -m examples.webapp`` (from the repository's root): the same as run.sh."""

import sys

from examples.webapp.run import main

sys.exit(main())
