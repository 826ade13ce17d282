"""The gateway config, as the agent loads it: the models live in the shared layer (device_profiles/config.py).

Kept so that `from edge_agent.config import load_gateway_config` (the agent, its tests, the
command line) goes on working; new code imports device_profiles.config.
"""

from __future__ import annotations

from device_profiles.config import (
    DeviceConfig,
    GatewayConfig,
    OutboxConfig,
    load_gateway_config,
    parse_gateway_config,
)

__all__ = ["DeviceConfig", "GatewayConfig", "OutboxConfig", "load_gateway_config", "parse_gateway_config"]
