"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class LungctError(Exception):
    """An error caused by user input (bad path, bad config, unreadable file); no traceback shown."""


class DataError(LungctError):
    """The data folder is missing, empty or laid out in a way lungct cannot read."""


class ImageReadError(LungctError):
    """One image file cannot be decoded."""


class ConfigError(LungctError):
    """A configuration key or value is invalid."""


class ModelError(LungctError):
    """Unknown model, bad weights or a corrupt checkpoint."""
