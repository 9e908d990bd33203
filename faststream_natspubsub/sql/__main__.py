"""``python -m faststream_natspubsub.sql postgresql|sqlite [PREFIX]``: print the tables' DDL."""

import sys

from .schema import DEFAULT_PREFIX, render_ddl

if len(sys.argv) not in (2, 3):
    sys.exit(__doc__)
print(render_ddl(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else DEFAULT_PREFIX), end="")
