"""``buildkit-sidecar drain`` and ``buildkit-sidecar export-trace``: the one-shot commands.

``drain`` is the preStop hook's client: it asks the local sidecar to drain and exits 0
drained, 1 not drained, 2 when no drain was asked (unreachable, not a sidecar, token
refused). ``export-trace`` writes the completed builds buildkitd still keeps as a trace.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import NamedTuple, TextIO
from urllib.parse import urlsplit

import aiohttp

from common import trace_format
from common.timestamps import rfc3339
from sidecar.buildkit import BuildkitClient, BuildkitError, open_channel
from sidecar.settings import Settings
from sidecar.state import Loss

EXPORTED = 0
NOT_EXPORTED = 2
"""``export-trace``: the trace was written, or it was not (buildkitd unreachable, file unwritable)."""


DRAINED = 0
NOT_DRAINED = 1
NO_DRAIN = 2
"""``buildkit-sidecar drain``'s exit codes: drained; the sidecar answered but is not drained
(its deadline passed, the drain was cancelled, or no answer within ``--timeout-seconds``);
no drain was asked (bad flags, unreachable, not a sidecar's drain endpoint, token refused)."""

CONNECT_SECONDS = 10.0
"""drain: how long connecting to the sidecar may take (at most ``--timeout-seconds``). It
listens on loopback and connects in milliseconds; past this it is not there, while a drain
under way answers only when it ends (up to its deadline), so the rest of the budget waits."""

ADMIN_URL = "http://127.0.0.1:9091"
"""The admin listener's default address (``--admin-listen``), where a preStop hook finds /drain."""


class DrainAnswer(NamedTuple):
    """What one POST /drain proved: the exit code, the body for standard output, a line for standard error."""

    code: int
    stdout: str
    stderr: str


def admin_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be the sidecar's listener (``http://host:port``), or None."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number or out of range
    except ValueError:
        return "the port must be a number from 1 to 65535"
    if parts.scheme in ("http", "https") and parts.hostname:
        return None
    reason = f"must be http://HOST:PORT: the sidecar's admin listener (--admin-listen, default {ADMIN_URL})"
    return reason + (f"; did you mean http://{url}?" if "://" not in url else "")


def unreachable(error: aiohttp.ClientError | TimeoutError, *, url: str, timeout_seconds: float) -> str:
    """One line saying why ``url`` could not be asked, with the likely fix."""
    if isinstance(error, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate of {url} not trusted: {error.certificate_error}"
    if isinstance(error, aiohttp.ClientSSLError):
        return f"TLS handshake with {url} failed: {error.os_error}"
    if isinstance(error, aiohttp.ClientConnectorDNSError):
        return f"cannot resolve the host of {url}: is --admin-url right?"
    if isinstance(error, aiohttp.ClientConnectorError):
        if isinstance(error.os_error, ConnectionRefusedError):
            return f"connection refused at {url}: is the sidecar running, and is --admin-url its --admin-listen?"
        return f"cannot connect to {url}: {error.os_error.strerror or error.os_error}"
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return f"no connection to {url} within {timeout_seconds:g} s: is --admin-url right?"
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return f"{url} closed the connection without an answer: is it the sidecar's (plain HTTP) listener?"
    return f"{url}: {type(error).__name__}: {error}"


def drain_answer(*, status: int, text: str, url: str, token_file: str | None) -> DrainAnswer:
    """Read the answer to POST /drain: only the sidecar's ``{"drained": ...}`` body is a drain's result."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("drained"), bool):
        if status == 200 and body["drained"]:
            return DrainAnswer(DRAINED, text, "")
        return DrainAnswer(NOT_DRAINED, text, f"not drained: {body.get('reason', f'HTTP {status}')}")
    said = body.get("error") if isinstance(body, dict) else " ".join(text.split())[:200]
    answered = f"{url} answered HTTP {status}" + (f" ({said})" if said else " (empty body)")
    if status in (401, 403):
        fix = (
            f"the token in --token-file={token_file!r} was refused: it must be the sidecar's --drain-token-file"
            if token_file
            else "pass the sidecar's --drain-token-file with --token-file, or use its admin listener"
        )
        return DrainAnswer(NO_DRAIN, "", f"{answered}: {fix}")
    return DrainAnswer(
        NO_DRAIN,
        "",
        f"{answered}: not a sidecar's drain endpoint; --admin-url must be the sidecar's admin listener "
        f"(--admin-listen, default {ADMIN_URL}), or its public one with --drain-token-file set",
    )


async def drain_client(*, url: str, token: str | None, timeout_seconds: float, token_file: str | None = None) -> int:
    """POST /drain and print the answer; exit :data:`DRAINED`, :data:`NOT_DRAINED` or :data:`NO_DRAIN`."""
    endpoint = url.rstrip("/") + "/drain"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connect_seconds = min(timeout_seconds, CONNECT_SECONDS)
    timeout = aiohttp.ClientTimeout(total=timeout_seconds, sock_connect=connect_seconds)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(endpoint, headers=headers) as response,
        ):
            answer = drain_answer(status=response.status, text=await response.text(), url=endpoint,
                                  token_file=token_file)  # fmt: skip
    except aiohttp.ConnectionTimeoutError as e:
        answer = DrainAnswer(NO_DRAIN, "", unreachable(e, url=endpoint, timeout_seconds=connect_seconds))
    except TimeoutError:
        answer = DrainAnswer(
            NOT_DRAINED,
            "",
            f"no answer from {endpoint} within --timeout-seconds={timeout_seconds:g}: "
            "not drained yet (the sidecar's drain goes on)",
        )
    except aiohttp.ClientError as e:
        answer = DrainAnswer(NO_DRAIN, "", unreachable(e, url=endpoint, timeout_seconds=timeout_seconds))
    if answer.stdout:
        print(answer.stdout)
    if answer.stderr:
        print(f"buildkit-sidecar drain: {answer.stderr}", file=sys.stderr)
    return answer.code


async def export_trace(*, settings: Settings, arch: str | None, out: TextIO | Path, timeout_seconds: float) -> int:
    """Write the completed builds buildkitd keeps as trace rows (to a stream, or a file
    created only once they are read). 0 written, 2 buildkitd unreachable or the file unwritable."""
    channel = open_channel(settings)
    try:
        client = BuildkitClient(channel, rpc_timeout_seconds=timeout_seconds)
        arch = arch or await client.arch() or "unknown"
        rows = [
            (r.created_at, (r.completed_at - r.created_at).total_seconds())
            async for r in client.history()
            if r.created_at is not None and r.completed_at is not None
        ]
    except BuildkitError as e:
        where = f"--buildkit-addr={settings.buildkit_addr!r}"
        if e.loss is Loss.REFUSED:
            print(f"buildkit-sidecar export-trace: cannot connect to buildkitd at {where}: {e}: "
                  "is buildkitd running, and is this its --addr?", file=sys.stderr)  # fmt: skip
        else:
            print(f"buildkit-sidecar export-trace: buildkitd at {where}: {e}", file=sys.stderr)
        return NOT_EXPORTED
    finally:
        await channel.close(grace=None)
    rows.sort()
    # A zero duration (clock granularity) would be refused by the trace's reader: 1 ms instead.
    trace = ((arch, rfc3339(started), max(seconds, 0.001)) for started, seconds in rows)
    if isinstance(out, Path):
        try:
            with out.open("w", encoding="utf-8", newline="") as file:
                trace_format.write(trace, file)
        except OSError as e:
            print(f"buildkit-sidecar export-trace: --out={str(out)!r}: cannot write: {e.strerror}", file=sys.stderr)
            return NOT_EXPORTED
    else:
        trace_format.write(trace, out)
    print(f"{len(rows)} completed builds (partial: only what buildkitd still keeps)", file=sys.stderr)
    return EXPORTED


def out_problem(path: Path) -> str | None:
    """Why the trace cannot be written to ``path``, checked before buildkitd is asked anything."""
    if path.is_dir():
        return "is a directory: name a file in it"
    parent = path.parent
    if not parent.is_dir():
        return f"no such directory {str(parent)!r}: create it first"
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return "permission denied"
    return None
