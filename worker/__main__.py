"""``python -m worker`` runs the same command line as the ``ackworker`` script."""

import sys

from worker.commands.cli import main

sys.exit(main())
