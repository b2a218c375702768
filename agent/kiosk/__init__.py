"""Kiosk role glue: usage and health metrics of the kiosk app, reported through the local API."""
