"""The project's error type: raised for anything a user can cause and fix."""
from __future__ import annotations


class StudioError(ValueError):
    """A user-fixable problem. The message says what is wrong and how to fix it.

    The CLI prints it as one line and exits with code 2; the app shows it as a message. The
    message is kept to one line (prompts and file names quoted in it may hold line breaks).
    """

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(" ".join(str(message).split()), *args)


class CancelledError(RuntimeError):
    """Raised inside the engine when the progress callback asks to stop."""
