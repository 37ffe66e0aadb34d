"""The one error a loader raises: what is wrong with a file, in words a user can act on."""


class LoadError(Exception):
    """The file cannot be turned into text. `status` is "failed" or "empty"."""

    def __init__(self, message: str, status: str = "failed") -> None:
        super().__init__(message)
        self.status = status
