"""Topic administration: the one place that drives aiokafka's admin client."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from fleetloop import topics


async def ensure_topics(bootstrap: str, names: Iterable[str] = topics.ALL,
                        partitions: int = topics.DEFAULT_PARTITIONS,
                        configs: Mapping[str, str] | None = None) -> None:
    """Create the topics that do not exist yet (idempotent), with topic `configs` (e.g. compaction)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, partitions, 1, topic_configs=dict(configs or {}))
                   for name in names if name not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()


async def partition_counts(bootstrap: str, names: Iterable[str]) -> dict[str, int]:
    """Partitions of each existing topic in `names`."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(names))
        return {t["topic"]: len(t["partitions"]) for t in described}
    finally:
        await admin.close()
