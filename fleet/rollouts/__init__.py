"""Staged rollouts of a signed release over a fleet (issue 12); ``plan`` is the pure core."""
