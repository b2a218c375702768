"""The MQTT contract shared by devices and the city (version 1).

Nothing here does I/O: topic builders, message models, canonical JSON and envelope signatures.
"""

SCHEMA_VERSION = 1
