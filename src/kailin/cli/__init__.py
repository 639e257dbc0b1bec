"""The ``kailin`` command line: one typer sub-app per concern, each a thin shell over the library."""
