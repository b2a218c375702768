"""Over-the-air updates on the device: TUF client, resumable object fetch, A/B slot installer,
the pure update state machine, the health gate and the launcher. See docs/ota.md."""
