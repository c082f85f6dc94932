"""Sweeps: many trials of one job on Ray Tune, locally, as a Ray job (remote) or a RayJob (kube), like targets/.
May import: spec, train, runs, recovery, console, targets, report (the report logged when a sweep ends).
"""
