"""The project's own exception types.

Every message names the offending field, file or version and says how to fix it.
"""


class MLPlatformError(Exception):
    """Base class of every error mlplatform raises on purpose."""


class ConfigError(MLPlatformError, ValueError):
    """A configuration file, argument or ``MLP_*`` variable is invalid."""


class DataValidationError(MLPlatformError, ValueError):
    """A dataset does not meet what the step that reads it requires."""


class ModelNotFound(MLPlatformError, LookupError):
    """A model name, version or alias does not exist in the registry."""


class TrainingError(MLPlatformError, RuntimeError):
    """Distributed training failed or produced no model."""


class RegistryError(MLPlatformError, RuntimeError):
    """A registry action cannot be done as asked (e.g. a rollback with no previous holder)."""


class PromotionRefused(RegistryError):
    """A promotion failed at least one gate; nothing changed. ``decision`` has every gate."""

    def __init__(self, message: str, decision=None):
        super().__init__(message)
        self.decision = decision
