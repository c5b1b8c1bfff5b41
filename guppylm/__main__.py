"""`python -m guppylm` runs the `guppy` command."""

import sys

from guppylm.cli import main

sys.exit(main())
