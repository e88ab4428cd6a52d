"""The in-process twins of the Redis adapters: the embedded default's turn log, leases,
fan-out, connection counts and chat owners, and the fakes unit tests use.

Several sets of twins can share one :class:`MemoryStore`, as several processes share one Redis:
unit tests run two "processes" in one event loop that way.
"""

from app.infra.memory.channels import InProcessChannels
from app.infra.memory.counter import InProcessConnectionCounter
from app.infra.memory.lease import InProcessLease
from app.infra.memory.owners import InProcessChatOwners
from app.infra.memory.store import MemoryStore
from app.infra.memory.turn_log import InProcessTurnLog

__all__ = [
    "InProcessChannels",
    "InProcessChatOwners",
    "InProcessConnectionCounter",
    "InProcessLease",
    "InProcessTurnLog",
    "MemoryStore",
]
