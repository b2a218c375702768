"""Tiny helpers shared by the benchmarks: medians, a ratio line, a --runs option."""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
from collections.abc import Sequence


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def fmt(values: Sequence[float], digits: int = 1) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def report(
    name: str,
    unit: str,
    ours: Sequence[float],
    baseline: Sequence[float],
    *,
    baseline_name: str = "baseline",
    target: str = "",
    digits: int = 1,
) -> float:
    """Print medians of both series and ours/baseline; returns the ratio."""
    m_ours, m_base = median(ours), median(baseline)
    ratio = m_ours / m_base if m_base else float("inf")
    print(f"{name}: {m_ours:.{digits}f} {unit} (median of {len(ours)}: {fmt(ours, digits)})")
    print(
        f"  {baseline_name}: {m_base:.{digits}f} {unit} (median of {len(baseline)}: {fmt(baseline, digits)})"
    )
    shown = f"{ratio:.2f}" if m_base else "n/a (baseline is 0)"
    print(f"  ratio ours/{baseline_name}: {shown}" + (f"  (target {target})" if target else ""))
    return ratio


def parser(description: str, runs: int = 3) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--runs", type=int, default=runs, help=f"repetitions (default {runs}); medians are reported"
    )
    return p


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so ``finally`` blocks stop the private brokers and agents."""
    signal.signal(signal.SIGTERM, lambda _s, _f: sys.exit(143))
