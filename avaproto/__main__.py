"""``python -m avaproto``: the same as the ``avaproto`` command."""

import sys

from .cli import main

sys.exit(main())
