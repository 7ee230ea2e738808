"""The what-if simulator: replay a build trace against a config on virtual time.

It drives each pool with the controller's own decision core (:mod:`autoscaler.policy`),
never the controller itself (the layering check in ``make test`` enforces it):

* :mod:`.trace`: reading traces (CSV, or the sidecars' ``build_completed`` logs); :mod:`.traces`: the bundled ones;
* :mod:`.model`: what the simulated fleet is (routing, capacity, start-up, drain deadline);
* :mod:`.pods`, :mod:`.engine`: one pool on virtual time, event by event;
* :mod:`.runs`: a config and its baselines over a trace; :mod:`.outcome`: what was measured;
* :mod:`.report`, :mod:`.chart`: the table, ``report.json``, ``chart.png``; :mod:`.commands`: the CLI.
"""
