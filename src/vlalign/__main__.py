"""``python -m vlalign`` runs the command-line tool."""

import sys

from vlalign.cli import main

sys.exit(main())
