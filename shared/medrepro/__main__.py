"""`python -m medrepro ...`, which is also what `torchrun -m medrepro ...` launches."""

import sys

from medrepro.suite.cli import main

sys.exit(main())
