"""Feature handlers: what a connection does with its frames once admitted."""

from app.domain.features.base import Feature, FeatureError, FeatureRegistry, FeatureServices

__all__ = ["Feature", "FeatureError", "FeatureRegistry", "FeatureServices"]
