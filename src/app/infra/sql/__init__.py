"""SQL adapters (advanced-alchemy on SQLite or PostgreSQL): flows, chats, build records."""

from app.infra.sql.build_store import SqlBuildStore
from app.infra.sql.config import make_sqlalchemy_config, upgrade_database
from app.infra.sql.repositories import SqlChatRepository, SqlFlowRepository

__all__ = [
    "SqlBuildStore",
    "SqlChatRepository",
    "SqlFlowRepository",
    "make_sqlalchemy_config",
    "upgrade_database",
]
