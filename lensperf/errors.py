"""Errors that describe bad input. The CLI prints them on one line and exits non-zero."""


class LensperfError(Exception):
    """A problem the user can fix (bad config, bad file, missing store), not a bug."""


class ConfigError(LensperfError):
    """A config value is unknown, of the wrong type or out of range; `key` is its dotted path."""

    def __init__(self, key: str, reason: str):
        self.key = key
        self.reason = reason
        super().__init__(f"config: {key}: {reason}" if key else f"config: {reason}")


class DataError(LensperfError):
    """A dataset, store or input file that cannot be used."""
