import sys

from robustcore.cli import main

sys.exit(main())
