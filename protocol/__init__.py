"""The PostgreSQL v3 wire protocol, sans I/O: framing, messages, startup and auth."""

import pgrouter_native.hook  # noqa: F401  (compiled modules first, when current)
