"""The error of a run that cannot start or go on as asked."""


class PipelineError(ValueError):
    """The run cannot start as asked; the message says what to change."""
