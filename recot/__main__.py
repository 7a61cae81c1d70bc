"""``python -m recot`` is the ``recot`` command."""

from recot.cli.main import main

main()
