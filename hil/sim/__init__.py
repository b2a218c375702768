"""Simulated kiosks and cameras speaking the MQTT contract, many on one asyncio loop."""
