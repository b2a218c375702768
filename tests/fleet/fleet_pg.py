"""The fleet tests' throwaway PostgreSQL cluster: ``hil.pgcluster`` (shared with the benchmarks)."""

from __future__ import annotations

from hil.pgcluster import PgCluster, PgError, find_bindir

__all__ = ["PgCluster", "PgError", "find_bindir"]
