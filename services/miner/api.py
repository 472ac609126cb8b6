"""MinerService: the gRPC face of the mining engine, problem scenes and curricula."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np
import pyarrow.parquet as pq
from fleetloop import request_checks, tables
from fleetloop.config import ConfigModel
from fleetloop.labels import LABEL_TABLE, Taxonomy
from fleetloop.query import MineRequest, QueryError
from fleetloop.query.compiler import MAX_LIMIT
from fleetloop.v1 import miner_pb2, miner_pb2_grpc
from fleetloop.warehouse import Warehouse
from pydantic import Field

from services.miner.engine import MinedClip, Miner
from services.miner.scenes import (
    Clustering,
    Curriculum,
    Problem,
    SceneConfig,
    cluster_problems,
    manifest_table,
    scene_tags,
    window_shares,
)

T = TypeVar("T")


@dataclass(frozen=True)
class MineDefaults:
    limit: int
    chunk: int


def to_request(message: miner_pb2.MineRequest, defaults: MineDefaults) -> MineRequest:
    """The engine's MineRequest from the wire one (0 = open / default); ValueError when invalid."""
    return MineRequest(
        expression=message.expression, start_ms=message.start_ms or None, end_ms=message.end_ms or None,
        vehicle_ids=tuple(message.vehicle_ids), parks=tuple(message.parks), output="clips",
        merge_gap_s=message.merge_gap_s, min_clip_s=message.min_clip_s,
        limit=min(message.limit or defaults.limit, MAX_LIMIT))


def clip_message(clip: MinedClip) -> miner_pb2.Clip:
    return miner_pb2.Clip(vehicle_id=clip.vehicle_id, start_ms=clip.start_ms, end_ms=clip.end_ms,
                          matched_seconds=clip.matched_seconds, matched_tags=list(clip.matched_tags),
                          case_ids=list(clip.case_ids))


# How many items a request's repeated fields may hold (fleetloop.request_checks).
REPEATED_MAX = {"vehicle_ids": 10_000, "parks": 1_000, "group_by": 16}


class MinerApi(miner_pb2_grpc.MinerServiceServicer):
    """Every call runs the (blocking) engine off the event loop; bad input -> INVALID_ARGUMENT."""

    def __init__(self, miner: Miner, taxonomy: Taxonomy, scenes: SceneConfig, defaults: MineDefaults,
                 max_problems: int) -> None:
        self.miner = miner
        self.taxonomy = taxonomy
        self.scenes = scenes
        self.defaults = defaults
        self.max_problems = max_problems

    async def _call(self, context, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
        except QueryError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        except ValueError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        raise AssertionError("unreachable")

    async def _request(self, message, context) -> MineRequest:
        try:
            return to_request(message, self.defaults)
        except ValueError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        raise AssertionError("unreachable")

    async def Mine(self, request, context):  # noqa: N802 - gRPC method name
        try:  # a server stream: checked here, as @guarded does for the unary calls
            request_checks.check(request, REPEATED_MAX)
        except request_checks.BadRequest as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        mine_request = await self._request(request, context)
        result = await self._call(context, self.miner.mine, mine_request)
        chunk = request.chunk_size or self.defaults.chunk
        for i in range(0, max(len(result.clips), 1), chunk):
            part = result.clips[i:i + chunk]
            yield miner_pb2.MineChunk(clips=[clip_message(c) for c in part], expression=result.expression if not i
                                      else "", plan=result.plan if not i else "",
                                      last=i + chunk >= len(result.clips))

    @request_checks.guarded(REPEATED_MAX)
    async def Count(self, request, context):  # noqa: N802
        counts = await self._call(context, self.miner.count, await self._request(request, context))
        return miner_pb2.CountResponse(**counts)

    @request_checks.guarded(REPEATED_MAX)
    async def Distribution(self, request, context):  # noqa: N802
        scope = MineRequest("clear | !clear", start_ms=request.start_ms or None, end_ms=request.end_ms or None,
                            parks=tuple(request.parks))
        rows = await self._call(context, self.miner.distribution, request.expression, list(request.group_by), scope)
        return miner_pb2.DistributionResponse(
            rows=[miner_pb2.DistributionRow(**r) for r in rows], total_seconds=sum(r["seconds"] for r in rows))

    @request_checks.guarded(REPEATED_MAX)
    async def Explain(self, request, context):  # noqa: N802
        return miner_pb2.ExplainResponse(**await self._call(context, self.miner.explain,
                                                            await self._request(request, context)))

    @request_checks.guarded(REPEATED_MAX)
    async def ListTags(self, request, context):  # noqa: N802
        tags = [miner_pb2.TagInfo(name=t.name, family=t.family, aliases=list(t.aliases), standard=t.standard,
                                  since=t.since) for t in self.taxonomy.active_tags]
        tags += [miner_pb2.TagInfo(name=n.name, family=n.family, standard=n.standard, numeric=True, unit=n.unit,
                                   since=n.since) for n in self.taxonomy.numeric]
        return miner_pb2.ListTagsResponse(taxonomy_version=self.taxonomy.version, tags=tags)

    @request_checks.guarded(REPEATED_MAX)
    async def Clusters(self, request, context):  # noqa: N802
        return await self._call(context, self.clusters, request)

    @request_checks.guarded(REPEATED_MAX)
    async def Curriculum(self, request, context):  # noqa: N802
        return await self._call(context, self.curriculum, request)

    # -- problem scenes ------------------------------------------------------------------------
    def load_problems(self, start_ms: int, end_ms: int) -> tuple[str, list[Problem]]:
        """The most recent problems in range: cases when that table has rows, else trigger events."""
        params = {"lo": start_ms, "hi": end_ms or 2**42, "n": self.max_problems}
        if self.miner.has_table(tables.CASES.name):  # absent while the case-assembler has not run
            rows = self.miner.warehouse.query_rows(
                "SELECT DISTINCT case_id, vehicle_id, toUnixTimestamp64Milli(window_start), toString(triggers[1]) "
                f"FROM {tables.CASES.name} "
                "WHERE window_start >= fromUnixTimestamp64Milli({lo:Int64}, 'UTC') "
                "AND window_start < fromUnixTimestamp64Milli({hi:Int64}, 'UTC') "
                "ORDER BY 3 DESC, 1 LIMIT {n:UInt64}", params)
            if rows:
                pre = self.scenes.window_pre_s * 1000
                return "cases", [Problem(str(c), v, int(s) + pre, t) for c, v, s, t in rows]
        if not self.miner.has_table(tables.TRIGGER_EVENTS.name):
            return "trigger_events", []
        rows = self.miner.warehouse.query_rows(
            "SELECT DISTINCT vehicle_id, toUnixTimestamp64Milli(onset), trigger, category "
            f"FROM {tables.TRIGGER_EVENTS.name} "
            "WHERE onset >= fromUnixTimestamp64Milli({lo:Int64}, 'UTC') "
            "AND onset < fromUnixTimestamp64Milli({hi:Int64}, 'UTC') ORDER BY 2 DESC, 1 LIMIT {n:UInt64}", params)
        return "trigger_events", [Problem(f"{v}/{t}/{o}", v, int(o), t, c) for v, o, t, c in rows]

    def label_shares(self, problems: list[Problem], tags: list[str]) -> np.ndarray:
        """Share of each problem's window seconds with each scene tag TRUE (labels read by minute)."""
        if not problems:
            return np.zeros((0, len(tags)))
        pre, post = self.scenes.window_pre_s * 1000, self.scenes.window_post_s * 1000
        minutes = sorted({m for p in problems for m in range((p.onset_ms - pre) // 60_000,
                                                             (p.onset_ms + post) // 60_000 + 1)})
        words = range(self.taxonomy.word_count)
        table = self.miner.warehouse.query_arrow(
            f"SELECT vehicle_id, toUnixTimestamp64Milli(ts) AS ts_ms, {', '.join(f't{w}' for w in words)} "
            f"FROM {LABEL_TABLE} FINAL WHERE vehicle_id IN {{v:Array(String)}} "
            "AND intDiv(toUnixTimestamp(ts), 60) IN {m:Array(Int64)}",
            {"v": sorted({p.vehicle_id for p in problems}), "m": minutes})
        vehicle = np.array(table.column("vehicle_id").to_pylist(), dtype=object)
        ts_ms = table.column("ts_ms").to_numpy().astype(np.int64)
        bits = np.zeros((table.num_rows, len(tags)), bool)
        for i, name in enumerate(tags):
            tag = self.taxonomy.tag(name)
            word = table.column(f"t{tag.word}").to_numpy().astype(np.uint64)
            bits[:, i] = (word >> np.uint64(tag.bit % 64)) & np.uint64(1) == 1
        return window_shares(problems, vehicle, ts_ms, bits, self.scenes.window_pre_s, self.scenes.window_post_s)

    def clustering(self, start_ms: int, end_ms: int, max_clusters: int) -> tuple[str, list[Problem], Clustering]:
        source, problems = self.load_problems(start_ms, end_ms)
        tags = scene_tags(self.taxonomy, self.scenes.families)
        if not problems:
            return source, problems, Clustering([], 0.0, np.zeros(0, int))
        shares = self.label_shares(problems, tags)
        return source, problems, cluster_problems(problems, shares, tags, self.scenes, max_clusters or None)

    def clusters(self, request: miner_pb2.ClustersRequest) -> miner_pb2.ClustersResponse:
        source, problems, result = self.clustering(request.start_ms, request.end_ms, request.max_clusters)
        out = miner_pb2.ClustersResponse(source=source, problems=len(problems), silhouette=result.silhouette)
        for scene in result.scenes:
            message = miner_pb2.Scene(name=scene.name, expression=scene.expression, size=len(scene.members),
                                      dominant_tags=scene.dominant_tags, dominant_trigger=scene.dominant_trigger,
                                      members=scene.members)
            if scene.expression:
                similar = MineRequest(scene.expression, limit=max(request.examples, 1))
                message.similar_seconds = int(self.miner.count(similar)["seconds"])
                if request.examples:
                    message.examples.extend(clip_message(c) for c in self.miner.mine(similar).clips)
            out.scenes.append(message)
        return out

    # -- curricula -------------------------------------------------------------------------------
    def curriculum(self, request: miner_pb2.CurriculumRequest) -> miner_pb2.CurriculumResponse:
        curriculum = Curriculum.from_yaml(request.yaml)
        scenes: dict[str, str] = {}
        if any(not s.expression for s in curriculum.stages):
            _, _, result = self.clustering(request.start_ms, request.end_ms, 0)
            scenes = {s.name: s.expression for s in result.scenes}
        out = miner_pb2.CurriculumResponse(name=curriculum.name)
        stage_clips = []
        for number, stage in enumerate(curriculum.stages, start=1):
            expression = stage.expression or scenes.get(stage.scene, "")
            if not expression:
                raise ValueError(f"stage {number}: scene {stage.scene!r} is neither a clustered scene "
                                 f"({', '.join(sorted(scenes)) or 'none'}) nor given an expression")
            mined = self.miner.mine(MineRequest(expression, start_ms=request.start_ms or None,
                                                end_ms=request.end_ms or None, limit=min(stage.samples, MAX_LIMIT)))
            clips = [(c.vehicle_id, c.start_ms, c.end_ms) for c in mined.clips]
            stage_clips.append((number, stage, mined.expression, clips))
            out.stages.append(miner_pb2.StageSummary(scene=stage.scene, expression=mined.expression,
                                                     requested=stage.samples, clips=len(clips), weight=stage.weight))
        buffer = io.BytesIO()
        pq.write_table(manifest_table(stage_clips), buffer)
        out.manifest_parquet = buffer.getvalue()
        return out


class MineSection(ConfigModel):
    default_limit: int = Field(gt=0)
    default_chunk: int = Field(gt=0)


class MinerConfig(ConfigModel):
    """services/miner/miner.yaml; `scenes` is validated by SceneConfig, here only max_problems is read."""

    scenes: dict[str, Any]
    mine: MineSection


def make_api(warehouse: Warehouse, taxonomy: Taxonomy, config: MinerConfig) -> MinerApi:
    scenes = SceneConfig.load()
    return MinerApi(Miner(warehouse, taxonomy), taxonomy, scenes,
                    MineDefaults(config.mine.default_limit, config.mine.default_chunk),
                    int(config.scenes["max_problems"]))
