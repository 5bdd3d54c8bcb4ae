"""MLflow model registry: register, aliases, promotion gates, rollback, history, approvals,
the hash-chained audit trail, model cards, and safe loading for serving."""

from mlplatform.errors import PromotionRefused, RegistryError
from mlplatform.registry.audit import AuditLog, AuditVerification
from mlplatform.registry.gates import GateConfig, GateResult
from mlplatform.registry.loading import LoadedModel, load_model, load_model_uri
from mlplatform.registry.promotion import AliasMove, PromotionDecision
from mlplatform.registry.registry import (
    ModelRegistry,
    ModelVersion,
    check_alias,
    check_model_name,
    check_model_uri,
    parse_model_ref,
)


def generate_model_card(name, version, config=None, dataset=None, project=None):
    """Render the model card of ``name`` v``version`` (see :mod:`mlplatform.registry.cards`)."""
    from mlplatform.registry.cards import generate_model_card as _generate

    return _generate(name, version, config=config, dataset=dataset, project=project)


__all__ = ["AliasMove", "AuditLog", "AuditVerification", "GateConfig", "GateResult",
           "LoadedModel", "ModelRegistry", "ModelVersion", "PromotionDecision",
           "PromotionRefused", "RegistryError", "check_alias", "check_model_name",
           "check_model_uri", "generate_model_card", "load_model", "load_model_uri",
           "parse_model_ref"]
