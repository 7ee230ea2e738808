"""Build tracking against the fake daemon at the wire."""

from __future__ import annotations

from tests.fake_buildkitd import FakeBuildkitd


async def test_counts_follow_builds_started_and_completed(daemon: FakeBuildkitd, sidecar) -> None:
    assert 0 == sidecar.state.active_count()
    a = daemon.start_build()
    b = daemon.start_build()
    await sidecar.until(lambda s: s.active_count() == 2)
    daemon.complete_build(a)
    await sidecar.until(lambda s: s.active_count() == 1)
    assert [b] == [build.ref for build in sidecar.state.active_builds()]
    daemon.complete_build(b, error_code=2, error_message="exit code 3")
    await sidecar.until(lambda s: s.active_count() == 0)
    assert 2.0 == sidecar.sample("buildkit_sidecar_builds_started_total", arch="amd64")
    assert 1.0 == sidecar.sample("buildkit_sidecar_builds_completed_total", arch="amd64", result="success")
    assert 1.0 == sidecar.sample("buildkit_sidecar_builds_completed_total", arch="amd64", result="failed")
