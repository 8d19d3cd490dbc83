"""``python -m fxpurify``: the same as the ``fxpurify`` console script (see ``cli.py``)."""
import sys

from .cli import main

sys.exit(main())
