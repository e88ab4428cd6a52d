"""The ``chat`` feature: session lifecycle, turns, history (what bisheng's ChatManager did)."""

from app.domain.chat.feature import ChatFeature

__all__ = ["ChatFeature"]
