"""The errors a user can cause, one type per kind; the CLI prints them in one line (exit 2)."""


class FindRayError(Exception):
    """Base class for errors caused by user input rather than by a bug."""


class ConfigError(FindRayError):
    """A configuration key is unknown, has the wrong type or an invalid value."""


class ModelPathError(FindRayError):
    """A model or weights path does not exist or does not hold what it should."""


class PromptError(FindRayError):
    """A prompt is outside the grammar of the world it is sent to."""


class ActorStartError(FindRayError):
    """A Ray actor's constructor failed; the message names it, the log holds the traceback."""
