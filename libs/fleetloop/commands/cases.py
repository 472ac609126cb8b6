"""`fleetloop cases`: list, show, adjudicate and export cases (CaseService on case-assembler)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from fleetloop.commands.rpc import call, endpoint
from fleetloop.report import table

app = typer.Typer(help="Cases: list, show, adjudicate, export (CaseService on case-assembler)", no_args_is_help=True)

VERDICTS = ("dangerous", "stupid", "not_an_issue")
RESPONSIBILITIES = ("unspecified", "ours", "shared", "third_party")


def _call(method: str, request):
    """One CaseService call on case-assembler; a failure is one line and exit code 2."""
    from fleetloop.v1 import case_service_pb2_grpc

    return call(endpoint("CASES_GRPC"), case_service_pb2_grpc.CaseServiceStub, method, request)


def _name(enum, value: int, prefix: str) -> str:
    return enum.Name(value).removeprefix(prefix).lower()


def _utc(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))


@app.command("list")
def list_cases(vehicle: str = typer.Option("", help="vehicle id"),
               trigger: str = typer.Option("", help="cases holding this trigger, e.g. hard_brake"),
               category: str = typer.Option("", help="mps, mpd, mpi or info"),
               status: str = typer.Option("", help="open, requested, uploading, complete, expired, failed"),
               tier_status: str = typer.Option("", help="cases with a tier in this upload status (pending, "
                                                        "requested, uploading, complete, expired, failed)"),
               start_ms: int = typer.Option(0, help="window ends at or after, epoch ms UTC"),
               end_ms: int = typer.Option(0, help="window starts before, epoch ms UTC"),
               limit: int = typer.Option(100)) -> None:
    """Cases matching every given filter, newest first."""
    from fleetloop.v1 import case_service_pb2, cases_pb2, triggers_pb2

    request = case_service_pb2.ListCasesRequest(
        vehicle_id=vehicle, trigger=trigger, tier_status=tier_status, start_ms=start_ms, end_ms=end_ms, limit=limit,
        category=triggers_pb2.TriggerCategory.Value(f"TRIGGER_CATEGORY_{category.upper()}") if category else 0,
        status=cases_pb2.CaseStatus.Value(f"CASE_STATUS_{status.upper()}") if status else 0)
    response = _call("ListCases", request)
    typer.echo(table(["case", "vehicle", "window (UTC)", "s", "category", "triggers", "tiers", "status", "verdict"], [
        [c.case_id, c.vehicle_id, _utc(c.window_start_ms), f"{(c.window_end_ms - c.window_start_ms) / 1000:.0f}",
         _name(triggers_pb2.TriggerCategory, c.category, "TRIGGER_CATEGORY_"),
         ",".join(sorted({t.trigger for t in c.triggers})),
         " ".join(f"{u.tier}:{_name(cases_pb2.UploadStatus, u.status, 'UPLOAD_STATUS_')}" for u in c.uploads),
         _name(cases_pb2.CaseStatus, c.status, "CASE_STATUS_"),
         _name(cases_pb2.Verdict, c.adjudication.verdict, "VERDICT_")] for c in response.cases]))


@app.command("show")
def show(case_id: str) -> None:
    """One case as JSON: triggers, window, tiers and their uploads, adjudication."""
    from google.protobuf.json_format import MessageToJson

    from fleetloop.v1 import case_service_pb2

    typer.echo(MessageToJson(_call("GetCase", case_service_pb2.GetCaseRequest(case_id=case_id)),
                             preserving_proto_field_name=True))


@app.command("adjudicate")
def adjudicate(case_id: str,
               verdict: str = typer.Option(..., help="dangerous, stupid or not_an_issue"),
               responsibility: str = typer.Option("unspecified", help="ours, shared, third_party"),
               reviewer: str = typer.Option(..., help="who judged"),
               note: str = typer.Option("")) -> None:
    """Mark a case dangerous / stupid / not an issue and set responsibility (MPD_all / MPD_resp follow)."""
    from fleetloop.v1 import case_service_pb2, cases_pb2

    if verdict not in VERDICTS:
        raise typer.BadParameter(f"verdict must be one of {', '.join(VERDICTS)}")
    if responsibility not in RESPONSIBILITIES:
        raise typer.BadParameter(f"responsibility must be one of {', '.join(RESPONSIBILITIES)}")
    case = _call("AdjudicateCase", case_service_pb2.AdjudicateCaseRequest(
        case_id=case_id, verdict=cases_pb2.Verdict.Value(f"VERDICT_{verdict.upper()}"),
        responsibility=cases_pb2.Responsibility.Value(f"RESPONSIBILITY_{responsibility.upper()}"),
        reviewer=reviewer, note=note))
    typer.echo(f"case {case.case_id} is now {verdict} (responsibility {responsibility}), revision {case.revision}")


@app.command("export")
def export(case_id: str, out: Path = typer.Option(None, help="zip to write (default ./<case_id>.zip)")) -> None:
    """Download the case bundle: case.json and its MCAP logs in one zip."""
    from fleetloop.v1 import case_service_pb2

    response = _call("ExportCaseBundle", case_service_pb2.ExportCaseBundleRequest(case_id=case_id, inline=True))
    path = out or Path(f"{case_id}.zip")
    path.write_bytes(response.bundle)
    typer.echo(f"wrote {path} ({response.size_bytes:,} bytes): {', '.join(response.files)}")
