"""`python -m experiments.invariance`: the invariance experiment's entry point (experiments/invariance/zoo.py)."""

import sys

from experiments.invariance.zoo import main

if __name__ == "__main__":
    sys.exit(main())
