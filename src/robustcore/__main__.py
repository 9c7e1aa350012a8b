"""`python -m robustcore`: the CLI, run in the warm server when the workflow started one."""

import sys

from robustcore.warm import delegate

status = delegate(sys.argv[1:])
if status is None:
    # Imported only here: with a warm server the job's own process never needs pandas or torch.
    from robustcore.cli import main

    status = main()
sys.exit(status)
