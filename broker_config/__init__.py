"""Mosquitto configuration shipped with campus-iot: files, not code.

A package only so that these files travel inside the wheel, and `campus
broker-config --district` finds bridge.conf.template in an installed copy as
well as in a checkout. README.md here describes them.
"""

from pathlib import Path

FILES = Path(__file__).parent
