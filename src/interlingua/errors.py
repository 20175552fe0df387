"""One exception type for every user-facing problem: bad config, bad data, bad store."""


class InterlinguaError(Exception):
    """A problem the user can fix; the message names the key, file or line."""


class ConfigError(InterlinguaError):
    pass


class DataError(InterlinguaError):
    pass
