"""The one exception type users see: a one-line, actionable message."""


class ImgclsError(Exception):
    """Bad input or configuration. The CLI prints the message alone, without a traceback."""
