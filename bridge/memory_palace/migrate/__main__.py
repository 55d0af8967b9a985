"""`python -m memory_palace.migrate`: the memory-palace-sqlite-to-pg command."""

import sys

from .cli import main

sys.exit(main())
