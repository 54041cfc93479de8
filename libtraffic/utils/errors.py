"""The one exception type for user mistakes.

The CLIs catch :class:`LibTrafficError`, print its message and exit with code 2 without a
traceback. Bugs raise anything else and keep their traceback.
"""


class LibTrafficError(Exception):
    """A user mistake (bad flag, file, config value or search space); the message says what to do."""
