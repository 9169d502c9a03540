"""The running proxy: listeners, sessions, pools, backends, routing, admin, metrics, CLI."""

import pgrouter_native.hook  # noqa: F401  (compiled modules first, when current)
