"""``python -m autocompress.cli``: the ``autocompress`` command."""
import sys

from . import main

sys.exit(main())
