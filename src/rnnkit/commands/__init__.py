"""One module per task or tool of the ``rnnkit`` command; see ``rnnkit.cli``."""
