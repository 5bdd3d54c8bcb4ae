"""Monitoring: reference profiles of the training features (drift tests compare live traffic
with them)."""

from mlplatform.monitoring.profile import reference_profile

__all__ = ["reference_profile"]
