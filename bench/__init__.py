"""Benchmarks of the real ``buildkit-sidecar`` and the autoscaler's controller, on real time.

``python -m bench.run [--quick] [--results bench/results]`` (``make bench``)
runs the sidecar's and the autoscaler's. The sidecar is the installed console
script in a child process; the fake daemon (``fakes/buildkitd.py``) serves
it over a unix socket from the benchmark process, which is also the HTTP client. The autoscaler's
``Controller`` runs in the benchmark process; the fake fleet it manages (the
tests' fake Kubernetes API and 1,000 pods' ``/status``) in a child process.

Modules, one per benchmark, plus what they share:

* :mod:`bench.drain_latency`: COMPLETE → ``/drain`` answer, against a 1 s poll loop;
* :mod:`bench.resources`: RSS after 1k and 10k builds, idle CPU;
* :mod:`bench.burst`: 10k builds' events at once;
* :mod:`bench.http_latency`: ``/status`` and ``/metrics`` under a paced load;
* :mod:`bench.autoscaler_cycle`: one controller cycle over 1,000 pods (wall, CPU, API requests);
* :mod:`bench.autoscaler_reaction`: a surge on the sidecars → the scale PATCH at the API;
* :mod:`bench.fake_fleet` (the child process: fake API, fake sidecars, control API) and
  :mod:`bench.fleet` (starting it, the controller's wiring, the shared config);
* :mod:`bench.image`: the sidecar installed as the image installs it (runtime dependencies only);
* :mod:`bench.harness` (processes, HTTP, ``/proc``), :mod:`bench.stats`,
  :mod:`bench.report` (rows, sections, the fragment a run writes, the machine).

The simulator's (:mod:`bench.simulate_bench`, with :mod:`bench.frontier`) and the end-to-end
tests' (:mod:`bench.e2e_section`, from their ``out/e2e-report.json``) write fragments too;
:mod:`bench.assemble` joins every fragment in ``bench/results/`` into BENCHMARKS.md under
one verdict.
"""
