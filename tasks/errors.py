"""The base of every error caused by what a user gave (a file, a config, an option).

The CLI prints these as one line and exits with status 2; any other exception
is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Something the user gave is wrong; the message names it and says what is wrong."""
