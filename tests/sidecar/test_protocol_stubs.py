"""The committed stubs match proto/, and the proto subset decodes a real daemon's bytes."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import unknown_fields
from google.protobuf.message import Message

from sidecar.protocol import control_pb2

ROOT = Path(__file__).resolve().parents[2]
RECORDINGS = ROOT / "tests" / "sidecar" / "data" / "v0.32.2-session.jsonl"


@pytest.mark.looptime(False)
def test_committed_stubs_are_fresh_against_proto_sources(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "proto" / "generate.py"), str(tmp_path)], check=True, capture_output=True
    )
    generated = sorted(p.name for p in (tmp_path / "sidecar" / "protocol").iterdir())
    committed = sorted(p.name for p in (ROOT / "sidecar" / "protocol").iterdir() if p.suffix in (".py", ".pyi"))
    committed.remove("__init__.py")
    assert generated == committed
    stale = [
        name
        for name in generated
        if (tmp_path / "sidecar" / "protocol" / name).read_bytes()
        != (ROOT / "sidecar" / "protocol" / name).read_bytes()
    ]
    assert [] == stale, "run `make proto` and commit the result"


def test_method_paths_are_buildkits() -> None:
    service = control_pb2.DESCRIPTOR.services_by_name["Control"]
    assert "moby.buildkit.v1.Control" == service.full_name
    assert {"ListenBuildHistory", "Info", "ListWorkers", "Solve"} == set(service.methods_by_name)
    listen = service.methods_by_name["ListenBuildHistory"]
    assert (True, False) == (listen.server_streaming, listen.client_streaming)
    solve = service.methods_by_name["Solve"]  # unary: it returns when the build has ended
    assert (False, False) == (solve.server_streaming, solve.client_streaming)


def test_field_numbers_match_buildkit() -> None:
    record = control_pb2.BuildHistoryRecord.DESCRIPTOR
    expected = {
        "Ref": 1, "Frontend": 2, "FrontendAttrs": 3, "Exporters": 4, "error": 5, "CreatedAt": 6,
        "CompletedAt": 7, "logs": 8, "ExporterResponse": 9, "Result": 10, "Results": 11,
        "Generation": 12, "trace": 13, "pinned": 14, "numCachedSteps": 15, "numTotalSteps": 16,
        "numCompletedSteps": 17, "externalError": 18, "numWarnings": 19,
    }  # fmt: skip
    assert expected == {f.name: f.number for f in record.fields}
    solve = control_pb2.SolveRequest.DESCRIPTOR  # what the test clients send (fakes/builder_pods.py)
    assert {"Ref": 1, "Session": 5, "Frontend": 6, "FrontendAttrs": 7} == {f.name: f.number for f in solve.fields}
    assert {"ExporterResponse": 1} == {f.name: f.number for f in control_pb2.SolveResponse.DESCRIPTOR.fields}
    request = control_pb2.BuildHistoryRequest.DESCRIPTOR
    assert {"ActiveOnly": 1, "Ref": 2, "EarlyExit": 3, "Filter": 4, "Limit": 5} == {
        f.name: f.number for f in request.fields
    }
    assert {"STARTED": 0, "COMPLETE": 1, "DELETED": 2} == {
        v.name: v.number for v in control_pb2.BuildHistoryEventType.DESCRIPTOR.values
    }


def _recordings() -> list[dict[str, object]]:
    return [json.loads(line) for line in RECORDINGS.read_text().splitlines() if line.strip()]


def _unknown_paths(message: Message, path: str = "") -> list[str]:
    """Fields of the real bytes that our subset does not declare, anywhere in the tree."""
    found = [f"{path}#{f.field_number}" for f in unknown_fields.UnknownFieldSet(message)]
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type is None:
                continue
            children = list(value.values())
        elif field.is_repeated:
            children = list(value)
        else:
            children = [value]
        for child in children:
            found.extend(_unknown_paths(child, f"{path}.{field.name}"))
    return found


def test_history_records_of_a_real_daemon_decode_without_unknown_fields() -> None:
    events = [r for r in _recordings() if r["rpc"] == "ListenBuildHistory"]
    assert len(events) >= 40
    for raw in events:
        event = control_pb2.BuildHistoryEvent.FromString(base64.b64decode(str(raw["message_b64"])))
        assert [] == _unknown_paths(event)
        assert event.record.Ref


def test_recorded_requests_are_what_the_sidecar_sends() -> None:
    requests = {str(r["scenario"]): base64.b64decode(str(r["request_b64"])) for r in _recordings()}
    live = control_pb2.BuildHistoryRequest(ActiveOnly=True).SerializeToString()
    snapshot = control_pb2.BuildHistoryRequest(ActiveOnly=True, EarlyExit=True).SerializeToString()
    assert requests["live_active_only"] == live == b"\x08\x01"
    assert requests["snapshot_two_running"] == snapshot == b"\x08\x01\x18\x01"


def test_info_and_workers_of_a_real_daemon_decode() -> None:
    replies = {str(r["scenario"]): base64.b64decode(str(r["message_b64"])) for r in _recordings()}
    info = control_pb2.InfoResponse.FromString(replies["info"])
    assert "v0.32.2" == info.buildkitVersion.version
    workers = control_pb2.ListWorkersResponse.FromString(replies["listworkers"])
    platforms = [(p.OS, p.Architecture, p.Variant) for p in workers.record[0].platforms]
    assert ("linux", "amd64", "") == platforms[0]
    assert ("linux", "386", "") in platforms
