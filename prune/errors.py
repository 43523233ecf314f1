"""The one exception type whose message is shown to users as a single line."""


class PruneBenchError(Exception):
    """A user-facing error: its message is one line saying what is wrong and what to do."""
