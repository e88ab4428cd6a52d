"""The ``chat`` feature and the chat's life: rooms (one per chat, ``room.py``), turns, the turn
log's view, leases, finishing turns nobody will finish, history and resume."""

from app.domain.chat.feature import ChatFeature
from app.domain.chat.rooms import ChatRooms

__all__ = ["ChatFeature", "ChatRooms"]
