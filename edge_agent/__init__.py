"""The classroom gateway program: poll devices, publish over MQTT, run commands.

Data flows driver -> outbox (durable, on disk) -> MQTT link; commands flow
MQTT -> command executor -> driver, with results going back through the
outbox so they survive a broker outage too.
"""
