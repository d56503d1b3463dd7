"""`python -m lightmer ...`: the CLI, in a form torchrun can start
(`torchrun --nproc-per-node K -m lightmer train ...`)."""
import sys

from lightmer.cli import main

if __name__ == '__main__':
    sys.exit(main())
