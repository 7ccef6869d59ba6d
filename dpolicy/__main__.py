"""`python -m dpolicy ...` (also what `torchrun -m dpolicy train ...` runs)."""

import sys

from dpolicy.cli import main

sys.exit(main())
