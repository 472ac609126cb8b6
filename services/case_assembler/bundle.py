"""A case bundle: one zip with case.json (the full Case, protobuf JSON) and the case's MCAP logs,
named logs/<tier>.mcap, fetched from the object store."""

from __future__ import annotations

import io
import zipfile

from fleetloop.v1 import cases_pb2
from fleetloop.vehicle.objectstore import ObjectStore

from services.case_assembler.rows import case_json


def build_bundle(case: cases_pb2.Case, store: ObjectStore) -> tuple[bytes, list[str]]:
    """(zip bytes, names inside) for a case; tiers not uploaded yet are listed in case.json only."""
    buffer = io.BytesIO()
    names = ["case.json"]
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as bundle:  # MCAP chunks are compressed
        bundle.writestr("case.json", case_json(case))
        for upload in case.uploads:
            if upload.status == cases_pb2.UPLOAD_STATUS_COMPLETE and upload.uri:
                name = f"logs/{upload.tier}.mcap"
                bundle.writestr(name, store.get(upload.uri))
                names.append(name)
    return buffer.getvalue(), names
