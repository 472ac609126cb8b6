"""`fleetloop mine …`: the MinerService from the terminal.

`mine` (the top-level `fleetloop mine "rain & night"`) prints the clips as a table; `app` holds
the other commands (count, explain, tags, distribution, clusters, curriculum, export). The
miner's address comes from FLEETLOOP_MINER_GRPC, else `.fleetloop/endpoints.json` key MINER_GRPC.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from fleetloop.commands.rpc import call, endpoint, stream

app = typer.Typer(help="Mine the fleet's per-second labels (MinerService)", no_args_is_help=True)


def _call(method: str, request):
    """One unary MinerService call; a failure is one line and exit code 2."""
    from fleetloop.v1 import miner_pb2_grpc

    return call(endpoint("MINER_GRPC"), miner_pb2_grpc.MinerServiceStub, method, request)


def _stream(method: str, request):
    """The responses of one server-streaming MinerService call; a failure is one line and exit code 2."""
    from fleetloop.v1 import miner_pb2_grpc

    return stream(endpoint("MINER_GRPC"), miner_pb2_grpc.MinerServiceStub, method, request)


def _utc(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))


def _request(expression: str, start_ms: int, end_ms: int, vehicle: list[str] | None, park: list[str] | None,
             merge_gap_s: int, min_clip_s: int, limit: int):
    from fleetloop.v1 import miner_pb2

    return miner_pb2.MineRequest(expression=expression, start_ms=start_ms, end_ms=end_ms,
                                 vehicle_ids=vehicle or [], parks=park or [], merge_gap_s=merge_gap_s,
                                 min_clip_s=min_clip_s, limit=limit)


EXPRESSION = typer.Argument(..., help='e.g. "rain & night & junction.signalized & tricycle & !manual"')
START = typer.Option(0, help="epoch ms UTC, inclusive (0 = open)")
END = typer.Option(0, help="epoch ms UTC, exclusive (0 = open)")
VEHICLE = typer.Option(None, "--vehicle", help="restrict to this vehicle (repeatable)")
PARK = typer.Option(None, "--park", help="restrict to this park (repeatable)")
GAP = typer.Option(0, help="merge clips separated by at most this many seconds")
MIN_CLIP = typer.Option(0, help="drop clips shorter than this many seconds")


def mine(expression: str = EXPRESSION, start_ms: int = START, end_ms: int = END, vehicle: list[str] = VEHICLE,
         park: list[str] = PARK, merge_gap_s: int = GAP, min_clip_s: int = MIN_CLIP,
         limit: int = typer.Option(50, help="clips to print")) -> None:
    """Print the clips matching EXPRESSION as a table."""
    from fleetloop.report import table

    chunks = list(_stream("Mine", _request(expression, start_ms, end_ms, vehicle, park, merge_gap_s, min_clip_s,
                                           limit)))
    clips = [c for chunk in chunks for c in chunk.clips]
    typer.echo(f"{chunks[0].expression}  ({chunks[0].plan}; {len(clips)} clip(s) shown)")
    typer.echo(table(["vehicle", "start (UTC)", "end (UTC)", "s", "matched tags", "cases"],
                     [[c.vehicle_id, _utc(c.start_ms), _utc(c.end_ms), c.matched_seconds,
                       " ".join(c.matched_tags), " ".join(c.case_ids)] for c in clips]))


app.command("clips")(mine)


@app.command()
def count(expression: str = EXPRESSION, start_ms: int = START, end_ms: int = END, vehicle: list[str] = VEHICLE,
          park: list[str] = PARK, merge_gap_s: int = GAP, min_clip_s: int = MIN_CLIP) -> None:
    """Matching seconds, clips, vehicles and km."""
    r = _call("Count", _request(expression, start_ms, end_ms, vehicle, park, merge_gap_s, min_clip_s, 0))
    typer.echo(f"{r.expression}: {r.seconds:,} s ({r.seconds / 3600:,.1f} h) in {r.clips:,} clip(s) of "
               f"{r.vehicles:,} vehicle(s), {r.km:,.1f} km")


@app.command("explain")
def explain_command(expression: str = EXPRESSION, start_ms: int = START, end_ms: int = END) -> None:
    """The normalised expression, the plan, the bitmap algebra and the scan SQL."""
    r = _call("Explain", _request(expression, start_ms, end_ms, None, None, 0, 0, 0))
    typer.echo(f"expression: {r.expression}\nplan:       {r.plan}\nbitmaps:    {r.bitmap_algebra or '-'}\n"
               f"sql:        {r.sql}\nparameters: {r.parameters_json}")


@app.command()
def tags() -> None:
    """Every tag and numeric value the query language knows."""
    from fleetloop.report import table
    from fleetloop.v1 import miner_pb2

    r = _call("ListTags", miner_pb2.ListTagsRequest())
    typer.echo(f"taxonomy version {r.taxonomy_version}")
    typer.echo(table(["name", "family", "aliases", "kind", "standard"],
                     [[t.name, t.family, " ".join(t.aliases), f"numeric ({t.unit})" if t.numeric else "tag",
                       t.standard[:60]] for t in r.tags]))


@app.command()
def distribution(group_by: list[str] = typer.Argument(..., help="boolean tags, e.g. rain night junction"),
                 where: str = typer.Option("", help="restrict to seconds matching this expression"),
                 start_ms: int = START, end_ms: int = END, park: list[str] = PARK) -> None:
    """Seconds and km by combination of tags: the fleet's scene distribution."""
    from fleetloop.report import table
    from fleetloop.v1 import miner_pb2

    r = _call("Distribution", miner_pb2.DistributionRequest(expression=where, group_by=group_by,
                                                           start_ms=start_ms, end_ms=end_ms, parks=park or []))
    typer.echo(table(["combination", "hours", "km", "share"],
                     [[" & ".join(row.combination) or "(all)", f"{row.seconds / 3600:,.2f}", f"{row.km:,.1f}",
                       f"{row.share:.2%}"] for row in r.rows]))


@app.command()
def clusters(start_ms: int = START, end_ms: int = END, max_clusters: int = typer.Option(0),
             examples: int = typer.Option(3, help="mined clips shown per scene")) -> None:
    """Typical problem scenes (clusters of cases or trigger events) and more clips like each."""
    from fleetloop.report import table
    from fleetloop.v1 import miner_pb2

    r = _call("Clusters", miner_pb2.ClustersRequest(start_ms=start_ms, end_ms=end_ms, max_clusters=max_clusters,
                                                   examples=examples))
    typer.echo(f"{r.problems} problem(s) from {r.source}, {len(r.scenes)} scene(s), silhouette {r.silhouette:.2f}")
    typer.echo(table(["scene", "problems", "mine more with", "similar h"],
                     [[s.name, s.size, s.expression or "-", f"{s.similar_seconds / 3600:,.1f}"] for s in r.scenes]))
    for s in r.scenes:
        for c in s.examples:
            typer.echo(f"  {s.name[:40]:<40}  {c.vehicle_id} {_utc(c.start_ms)} +{c.matched_seconds} s")


@app.command()
def curriculum(path: Path = typer.Argument(..., exists=True, help="curriculum YAML (docs/MINING.md)"),
               out: Path = typer.Option(Path("manifest.parquet"), help="where to write the dataset manifest"),
               start_ms: int = START, end_ms: int = END) -> None:
    """Mine every stage of a curriculum and write the weighted dataset manifest (Parquet)."""
    from fleetloop.report import table
    from fleetloop.v1 import miner_pb2

    r = _call("Curriculum", miner_pb2.CurriculumRequest(yaml=path.read_text(), start_ms=start_ms, end_ms=end_ms))
    out.write_bytes(r.manifest_parquet)
    typer.echo(table(["stage", "scene", "expression", "requested", "clips", "weight"],
                     [[i + 1, s.scene, s.expression, s.requested, s.clips, s.weight] for i, s in enumerate(r.stages)]))
    typer.echo(f"manifest: {out}")


@app.command()
def export(expression: str = EXPRESSION, out: Path = typer.Option(Path("clips.parquet")), start_ms: int = START,
           end_ms: int = END, merge_gap_s: int = GAP, min_clip_s: int = MIN_CLIP,
           limit: int = typer.Option(1_000_000, help="at most this many clips")) -> None:
    """Stream every matching clip into a Parquet file, with a progress bar."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from rich.progress import Progress

    request = _request(expression, start_ms, end_ms, None, None, merge_gap_s, min_clip_s, limit)
    total = min(_call("Count", request).clips, limit)
    rows: dict[str, list] = {"vehicle_id": [], "start_ms": [], "end_ms": [], "matched_seconds": [],
                             "matched_tags": [], "case_ids": []}
    with Progress() as progress:
        task = progress.add_task("exporting clips", total=total or None)
        for chunk in _stream("Mine", request):
            for c in chunk.clips:
                for name in rows:
                    value = getattr(c, name)
                    rows[name].append(list(value) if name in ("matched_tags", "case_ids") else value)
            progress.advance(task, len(chunk.clips))
    pq.write_table(pa.table(rows), out)
    typer.echo(f"{len(rows['vehicle_id']):,} clip(s) -> {out}")
