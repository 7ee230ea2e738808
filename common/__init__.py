"""What the sidecar and the autoscaler share: wire formats and conventions, one copy each.

A rule written twice drifts, so each lives here once and both programs import it:

* :mod:`common.logs`: the structlog chain (JSON lines on stdout, ISO UTC times);
* :mod:`common.timestamps`: RFC 3339 in UTC with a ``Z``, and Kubernetes' two time formats;
* :mod:`common.arch`: Go architecture names (normalising, validating);
* :mod:`common.addresses`: ``host:port`` listeners and buildkitd's ``unix://`` / ``tcp://`` addresses;
* :mod:`common.trace_format`: the simulator's trace CSV (header and row format);
* :mod:`common.version`: the version ``--version`` prints (the installed distribution's).

Nothing here does I/O beyond writing to a stream it is handed, and nothing imports
the sidecar or the autoscaler.
"""
