"""The top floor: the `campus` command line, the demo, and the start-up of each program.

It stands on every other package (campus, the kernel; edge_agent; central; dashboards; firmware_stubs)
and nothing imports it (tests/test_layers.py).
"""
