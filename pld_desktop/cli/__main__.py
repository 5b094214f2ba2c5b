"""`python -m pld_desktop.cli`: the `pld` command."""

import sys

from . import main

sys.exit(main())
