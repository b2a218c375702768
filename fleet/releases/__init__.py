"""Signed releases on the city side: bundles (``bundle``), the TUF repository (``repo``), its
HTTP routes and timestamp re-signer (``serve``) and the ``cityedge release`` commands (``cli``).
See docs/ota-repository.md."""
