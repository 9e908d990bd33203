"""``python -m faststream_natspubsub.cli``."""

from . import main

main()
