"""campus-iot: shared pieces of the edge agent and the central services.

This package holds what both sides must agree on (the MQTT contract, the
error tree, URL parsing) and the `campus` command line.
"""

__version__ = "0.1.0"
