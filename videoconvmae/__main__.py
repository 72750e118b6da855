"""`python -m videoconvmae` / `torchrun -m videoconvmae`: the same CLI as the `videoconvmae` command."""

import sys

from videoconvmae.cli import main

sys.exit(main())
