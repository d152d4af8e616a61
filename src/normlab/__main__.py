"""``python -m normlab`` is the ``normlab`` command."""

from normlab.cli import entry

entry()
