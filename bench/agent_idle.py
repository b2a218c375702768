"""Idle agent cost: CPU % of one core and RSS (MB) over ``--seconds`` vs an idle Python process.

The agent runs with its default settings (telemetry every 30 s, WAL outbox, local API, logging to
a file) connected to a private mosquitto, started both ways it is started in the field:
``python -m agent run`` and the console script ``cityedge agent run``, and once more with the OTA
updater on (``[ota] enabled``, a real TUF root of trust, idle: nothing to install). The baseline is
``python -c 'import time; time.sleep(...)'`` measured over the same window. Measurement starts 3 s
after the agent reports it is connected.

    python -m bench.agent_idle [--runs 3] [--seconds 30]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import tomli_w

from agent.errors import LocalApiError
from agent.localapi import LocalApiClient
from bench.common import exit_on_sigterm, parser, report
from fleet.broker import MosquittoBroker

TARGET_CPU, TARGET_RSS = "< 1 % of a core", "< 60 MB"


def agent_command(entry: str, config: Path) -> list[str]:
    if entry == "cityedge":
        return [str(Path(sys.executable).parent / "cityedge"), "agent", "run", "--config", str(config)]
    # "module" and "ota" (the way the launcher starts a slot)
    return [sys.executable, "-m", "agent", "run", "--config", str(config)]


def start_agent(work: Path, entry: str, broker: MosquittoBroker) -> tuple[subprocess.Popen[bytes], Path]:
    data_dir = work / f"data-{entry}"
    config = work / f"{entry}.toml"
    settings = {
        "data_dir": str(data_dir),
        "device": {"id": f"bench-idle-{entry}"},
        "mqtt": {"broker": broker.url},
    }
    if entry == "ota":
        from fleet.releases.repo import init_repo

        repo = work / "releases"
        init_repo(repo, work / "offline-keys")
        settings["ota"] = {
            "enabled": True,
            "repository_url": "http://127.0.0.1:9/tuf/",
            "root": str(work / "slots"),
            "trusted_root": str(repo / "metadata" / "1.root.json"),
        }
    config.write_text(tomli_w.dumps(settings))
    err = open(work / f"{entry}.stderr", "wb")  # noqa: SIM115 (the child keeps it)
    proc = subprocess.Popen(agent_command(entry, config), stdout=subprocess.DEVNULL, stderr=err)
    return proc, data_dir


def wait_connected(proc: subprocess.Popen[bytes], data_dir: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited with {proc.returncode}")
        try:
            if LocalApiClient(data_dir, timeout=5).status()["link"]["connected"]:
                return
        except LocalApiError:
            pass
        time.sleep(0.2)
    raise RuntimeError("agent did not connect")


def cpu_seconds(pid: int) -> float:
    """On-CPU time of all threads of ``pid`` in ns precision (/proc/PID/task/*/schedstat)."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def measure(pids: list[int], seconds: float) -> list[tuple[float, float]]:
    """(cpu % of one core, max RSS MB) per pid over the window."""
    procs = [psutil.Process(pid) for pid in pids]
    start = [cpu_seconds(pid) for pid in pids]
    peak = [0.0] * len(procs)
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        for i, p in enumerate(procs):
            peak[i] = max(peak[i], p.memory_info().rss / 1e6)
        time.sleep(1.0)
    elapsed = time.monotonic() - t0
    out = []
    for i, pid in enumerate(pids):
        out.append((100.0 * (cpu_seconds(pid) - start[i]) / elapsed, peak[i]))
    return out


def one_run(work: Path, broker: MosquittoBroker, seconds: float) -> dict[str, tuple[float, float]]:
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for entry in ("module", "cityedge", "ota"):
            proc, data_dir = start_agent(work, entry, broker)
            procs[entry] = proc
            wait_connected(proc, data_dir)
        procs["baseline"] = subprocess.Popen(
            [sys.executable, "-c", f"import time; time.sleep({seconds + 60})"]
        )
        time.sleep(3.0)
        names = list(procs)
        results = measure([procs[n].pid for n in names], seconds)
        return dict(zip(names, results, strict=True))
    finally:
        for proc in procs.values():
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--seconds", type=float, default=30.0)
    args = p.parse_args()
    exit_on_sigterm()
    runs: list[dict[str, tuple[float, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        broker = MosquittoBroker(Path(tmp) / "broker").start()
        try:
            for i in range(args.runs):
                work = Path(tmp) / f"run{i}"
                work.mkdir()
                runs.append(one_run(work, broker, args.seconds))
        finally:
            broker.stop()
    base_cpu = [r["baseline"][0] for r in runs]
    base_rss = [r["baseline"][1] for r in runs]
    print(f"idle over {args.seconds:.0f} s, {args.runs} runs, load average {psutil.getloadavg()[0]:.1f}")
    entries = (
        ("module", "python -m agent run"),
        ("cityedge", "cityedge agent run"),
        ("ota", "python -m agent run, OTA updater on"),
    )
    for entry, label in entries:
        cpu = [r[entry][0] for r in runs]
        rss = [r[entry][1] for r in runs]
        report(
            f"{label}: CPU",
            "% of a core",
            cpu,
            base_cpu,
            baseline_name="idle python",
            target=TARGET_CPU,
            digits=3,
        )
        report(f"{label}: RSS", "MB", rss, base_rss, baseline_name="idle python", target=TARGET_RSS)


if __name__ == "__main__":
    main()
