"""Errors a backend raises; the server maps each to a gRPC status code."""


class BadRequest(ValueError):
    """Malformed input (shape, length): INVALID_ARGUMENT."""


class ComponentMissing(RuntimeError):
    """The model has no such component (e.g. no VAE encoder): FAILED_PRECONDITION."""


class SessionNotFound(LookupError):
    """A denoise session the sidecar does not hold (ended, evicted, or from before a
    restart): NOT_FOUND."""


class LoadError(RuntimeError):
    """The model could not be loaded; the sidecar exits."""
