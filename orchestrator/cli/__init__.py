"""The `orch` command line: a thin layer over the library, one module per command group.
May import: every package (it is the top; only it imports runs.lifecycle).
"""
