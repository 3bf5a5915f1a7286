"""``python -m saekit ...`` is the ``saekit`` command (saekit.cli)."""

import sys

from saekit.cli import main

sys.exit(main())
