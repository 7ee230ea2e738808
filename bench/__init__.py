"""Benchmarks of the real ``buildkit-sidecar`` against the fake buildkitd, on real time.

``python -m bench.run [--quick] [--out BENCHMARKS.md]`` (``make bench``) runs
them all. The sidecar is the installed console script in a child process; the
fake daemon (``tests/fake_buildkitd.py``) serves it over a unix socket from
the benchmark process, which is also the HTTP client.

Modules, one per benchmark, plus what they share:

* :mod:`bench.drain_latency`: COMPLETE → ``/drain`` answer, against a 1 s poll loop;
* :mod:`bench.resources`: RSS after 1k and 10k builds, idle CPU;
* :mod:`bench.burst`: 10k builds' events at once;
* :mod:`bench.http_latency`: ``/status`` and ``/metrics`` under a paced load;
* :mod:`bench.harness` (processes, HTTP, ``/proc``), :mod:`bench.stats`,
  :mod:`bench.report` (machine, tables, Markdown).
"""
