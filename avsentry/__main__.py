"""``python -m avsentry``: the same as the ``avsentry`` command."""

import sys

from avsentry.cli import main

sys.exit(main())
