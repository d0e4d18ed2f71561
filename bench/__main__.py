"""`python -m bench`: the whole streaming benchmark (see bench/README.md)."""

import sys

from bench.run import main

sys.exit(main())
