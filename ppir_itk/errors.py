"""Errors a user can act on.

Every error raised for bad input is an :class:`InputError` whose message is
one sentence naming the input and what is wrong with it. The command line
prints that sentence and exits non-zero, without a traceback.
"""


class InputError(ValueError):
    """Bad input from the user: a file, an image, an option or a parameter."""
