"""The burst benchmark's same-run baseline: the least a Python gRPC client can do with the same events.

``python -m bench.grpc_floor --address unix:/path/buildkitd.sock --builds N`` subscribes to
``ListenBuildHistory`` as the sidecar does (``ActiveOnly``, live), prints ``subscribed`` once
the stream is open, then receives every event (grpc.aio, protobuf decoding: what the sidecar
cannot avoid) and only notes each completed build's ref. When ``N`` distinct builds have
completed it prints ``done <CPU seconds since subscribed>`` and exits. :mod:`bench.burst` times it on the
same burst as the sidecar, in the same run: the sidecar's time over this one is the sidecar's
own cost, whatever the machine does to gRPC's.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence

import grpc.aio

from sidecar.protocol import control_pb2, control_pb2_grpc


async def follow(address: str, builds: int) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        call = control_pb2_grpc.ControlStub(channel).ListenBuildHistory(
            control_pb2.BuildHistoryRequest(ActiveOnly=True)
        )
        await call.initial_metadata()
        print("subscribed", flush=True)
        cpu_before = time.process_time()
        completed: set[str] = set()
        async for event in call:
            if event.type == control_pb2.BuildHistoryEventType.COMPLETE:
                completed.add(event.record.Ref)
                if len(completed) >= builds:
                    break
        call.cancel()
    print(f"done {time.process_time() - cpu_before:.3f}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", required=True, help="the fake buildkitd's gRPC address")
    parser.add_argument("--builds", type=int, required=True, help="exit when this many builds have completed")
    args = parser.parse_args(argv)
    asyncio.run(follow(args.address, args.builds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
