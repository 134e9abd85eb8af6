"""Errors the engine raises for bad input or configuration.

Every message is meant to be shown to an operator as it is: it names the file, field or
setting and the reason. Callers turn these into exit codes, field errors or failed analyses;
they never need a traceback to explain them.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class: a problem the user can fix (input, prompts, weights, configuration)."""


class ModelLoadError(EngineError):
    """The model or its weights could not be loaded."""


class PromptError(EngineError):
    """A prompt set is empty or otherwise unusable."""


class MediaError(EngineError):
    """An image or video file cannot be used."""
