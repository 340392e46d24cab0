"""The base of jhub-suspend's errors."""

from __future__ import annotations

#: The status of a call that got no answer at all: unreachable, timed out, or the connection
#: lost. 0, as kubernetes_asyncio's ApiException has it (not tornado's 599).
NO_ANSWER = 0


class JhubSuspendError(Exception):
    """An error with a message for people and an HTTP status.

    ``status`` is the status the failing call was answered with (by the hub, a node agent, a
    kubelet), :data:`NO_ANSWER` when it got none, or, for errors of jhub-suspend's own making,
    the status its APIs answer them with: the class's :attr:`status`, 500 unless it says
    otherwise. ``str()`` is the message.
    """

    status: int = 500

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return self.message


class OwnError(JhubSuspendError):
    """An error of jhub-suspend's own making: its status is the class's :attr:`status`, and
    only the message varies from one to the next."""

    def __init__(self, message: str) -> None:
        super().__init__(self.status, message)
