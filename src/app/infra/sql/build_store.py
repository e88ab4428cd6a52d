"""The embedded :class:`~app.domain.ports.BuildStore`: a table with an expiry column, so that
``app flows build`` and the server, two processes, share build records without Redis.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from advanced_alchemy.repository import SQLAlchemyAsyncRepository

from app.domain.builds import BuildRecord, BuildStatus, build_key
from app.infra.sql.models import BuildRecordRow
from app.infra.sql.sessions import SessionMaker, insert_for, unit_of_work


class _BuildRecordRows(SQLAlchemyAsyncRepository[BuildRecordRow]):
    model_type = BuildRecordRow
    id_attribute = "key"


class SqlBuildStore:
    """Expired rows read as absent. They are overwritten by the next build of the same key,
    so the table holds at most one row per flow and version and needs no sweeping.
    """

    def __init__(self, sessions: SessionMaker) -> None:
        self._sessions = sessions

    async def get(self, flow_id: str, version_id: int | None) -> BuildRecord | None:
        async with unit_of_work(self._sessions) as session:
            row = await _BuildRecordRows(session=session).get_one_or_none(
                BuildRecordRow.key == build_key(flow_id, version_id),
                BuildRecordRow.expires_at > datetime.now(UTC),
            )
            if row is None:
                return None
            return BuildRecord(
                flow_id=row.flow_id,
                version_id=row.version_id,
                status=BuildStatus(row.status),
                graph_data=row.graph_data,
                problems=list(row.problems),
            )

    async def put(self, record: BuildRecord, ttl_seconds: int) -> None:
        values = {
            "flow_id": record.flow_id,
            "version_id": record.version_id,
            "status": record.status.value,
            "graph_data": record.graph_data,
            "problems": record.problems,
            "expires_at": datetime.now(UTC) + timedelta(seconds=ttl_seconds),
        }
        async with unit_of_work(self._sessions) as session:
            upsert = insert_for(session, BuildRecordRow).values(key=record.key, **values)
            await session.execute(upsert.on_conflict_do_update(index_elements=["key"], set_=values))
            await session.commit()
