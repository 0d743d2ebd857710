"""User-facing errors.

Anything raised as :class:`Selma3dError` is a problem with the user's input or environment
(a missing slice, a shape mismatch, an unknown method name). The CLI prints its message on one
line, without a traceback, and exits with status 1. Bugs stay ordinary exceptions.
"""


class Selma3dError(Exception):
    """A clear, one-line problem the user can fix."""


class InputError(Selma3dError, ValueError):
    """Bad input data: unreadable, inconsistent or of the wrong kind."""
