"""Errors a user can act on. The CLI prints their message as one line and exits non-zero."""


class InvertError(Exception):
    """A problem with the user's input, files or environment, described in one line."""


class ModelLoadError(InvertError):
    """The base model or CLIP model could not be loaded."""


class InstructionFileError(InvertError):
    """An .inst file is malformed, tampered with, or does not fit the model."""


class EncoderFileError(InvertError):
    """An edit encoder file is malformed, tampered with, or does not fit the model."""


class InvertWarning(UserWarning):
    """A conversion the user should know about (an animation's first frame used, an image resized); the CLI
    prints it as one 'warning:' line."""
