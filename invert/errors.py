"""Errors a user can act on. The CLI prints their message as one line and exits non-zero."""
from .display import printable


class InvertError(Exception):
    """A problem with the user's input, files or environment, described in one line. Text from a file in the
    message (a name, an init text, a config value) cannot break it: control characters show as escapes."""

    def __str__(self) -> str:
        return printable(super().__str__())


class ModelLoadError(InvertError):
    """The base model or CLIP model could not be loaded."""


class InstructionFileError(InvertError):
    """An .inst file is malformed, tampered with, or does not fit the model."""


class EncoderFileError(InvertError):
    """An edit encoder file is malformed, tampered with, or does not fit the model."""


class NonFiniteResult(InvertError):
    """Sampling gave NaN or inf: an image made of it would be all black (or white), so it is an error instead."""


class InvertWarning(UserWarning):
    """A conversion the user should know about (an animation's first frame used, an image resized); the CLI
    prints it as one 'warning:' line, control characters escaped as in an InvertError."""

    def __str__(self) -> str:
        return printable(super().__str__())
