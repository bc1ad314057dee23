"""Errors a user can act on. The CLI turns `InputError` into a one-line message and exit 2."""


class InputError(Exception):
    """Bad input from the user: a missing file, an unknown task, a malformed record.

    The message must name the offending thing; the CLI prints it without a traceback.
    """
