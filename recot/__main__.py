"""``python -m recot`` is the ``recot`` command."""

from recot.cli import main

main()
