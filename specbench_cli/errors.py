"""The one base class of errors meant for users: the CLI prints these as one line (exit 2);
anything else is a bug and keeps its traceback."""


class SpecbenchError(ValueError):
    """Bad input, a missing file, an unusable model or option: something the user can fix.
    A ValueError too, so callers of the Python API may catch either."""


class ModelLoadError(SpecbenchError):
    """A model, checkpoint, tokenizer or device that cannot be used as given."""
