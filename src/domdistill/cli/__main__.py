"""``python -m domdistill.cli``."""

from domdistill.cli import main

main()
