"""Exceptions shared by the whole library.

Every error a user can cause (a bad file, a dead server, a path outside the allowed folders) is a
TagLoomError whose message names the file or thing and the problem. The CLI prints it without a
traceback; the nodes let it fail the node with that message.
"""


class TagLoomError(Exception):
    """A problem the user can fix; the message says which file or input and what is wrong."""


class InputFileError(TagLoomError):
    """A file given by the user is missing, unreadable or malformed."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class CancelledError(TagLoomError):
    """The user cancelled a long-running job (ComfyUI's Cancel, Ctrl-C)."""
