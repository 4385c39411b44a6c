"""``python -m clipvip`` runs the command line."""

import sys

from clipvip.cli import main

sys.exit(main())
