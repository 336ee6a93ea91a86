"""``python -m core``: the studio's command line."""
import sys

from .cli import main

sys.exit(main())
