"""The ``recot`` command line, the top of the house: thin commands over the Python API of every room."""
