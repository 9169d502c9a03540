"""Importing this module activates the compiled modules (see ``pgrouter_native``).

Each package's ``__init__`` imports it first, so the hook is in place before any module
that may be compiled loads.
"""

from pgrouter_native import activate

activate()
