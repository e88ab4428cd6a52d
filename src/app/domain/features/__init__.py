"""Feature handlers: what a connection does with its frames once admitted."""

from app.domain.features.base import (
    Feature,
    FeatureError,
    FeatureFactory,
    FeatureRegistry,
    FeatureServices,
)

__all__ = ["Feature", "FeatureError", "FeatureFactory", "FeatureRegistry", "FeatureServices"]
