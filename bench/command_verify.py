"""Per-command cost of signed-command verification vs the unsigned path, same run, medians.

* baseline (unsigned path): parse + validate the payload (``json.loads`` + ``protocol.models.Command``),
  what the agent does with every command anyway.
* ours: the same + ``SignedCommandVerifier.verify``: Ed25519 signature over the canonical JSON,
  expiry / clock-skew / lifetime checks, and the nonce recorded in the persistent SQLite replay
  window (WAL, ``synchronous=FULL``: the nonce is on disk before the command may run).
* also shown: the verifier with ``synchronous=NORMAL`` and signature checks alone (no replay store),
  to split the cost between cryptography and the fsync.

    python -m bench.command_verify [--runs 5] [--commands 2000]
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.replay import ReplayStore
from agent.verify import SignedCommandVerifier, VerifyPolicy, check_command
from bench.common import median, parser, report
from fleet.signer import Ed25519Signer
from protocol.models import Command
from protocol.timefmt import utc_now
from protocol.trust import key_id


def make_payloads(count: int) -> tuple[list[bytes], dict[str, Any]]:
    key = Ed25519PrivateKey.generate()
    kid = key_id("fleet", key.public_key())
    signer = Ed25519Signer(key, kid)
    args = {"delay_s": 5, "reason": "scheduled maintenance", "lines": 200}
    payloads = [
        json.dumps(signer.sign({"id": f"cmd-{i:06d}", "name": "get_logs", "args": args})).encode()
        for i in range(count)
    ]
    return payloads, {kid: key.public_key()}


def unsigned_path(payloads: list[bytes]) -> float:
    start = time.perf_counter()
    for payload in payloads:
        Command.model_validate(json.loads(payload))
    return (time.perf_counter() - start) / len(payloads) * 1e6


def signed_path(payloads: list[bytes], verify: Callable[[dict[str, Any]], object]) -> float:
    start = time.perf_counter()
    for payload in payloads:
        obj = json.loads(payload)
        Command.model_validate(obj)
        verify(obj)
    return (time.perf_counter() - start) / len(payloads) * 1e6


def with_store(payloads: list[bytes], keys: dict[str, Any], fsync: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        store = ReplayStore(Path(tmp) / "replay.db", fsync=fsync)
        verifier = SignedCommandVerifier(keys, store)
        try:
            return signed_path(payloads, verifier.verify)
        finally:
            store.close()


def signature_only(payloads: list[bytes], keys: dict[str, Any]) -> float:
    policy = VerifyPolicy()

    def verify(obj: dict[str, Any]) -> object:
        now: datetime = utc_now()
        return check_command(obj, keys, now, policy)

    return signed_path(payloads, verify)


def main() -> None:
    args = parser("signed command verification vs unsigned validation", runs=5)
    args.add_argument("--commands", type=int, default=2000, help="commands per run (default 2000)")
    opts = args.parse_args()
    base, full, normal, sig = [], [], [], []
    for _ in range(opts.runs):
        payloads, keys = make_payloads(opts.commands)  # fresh nonces every run (no replays)
        base.append(unsigned_path(payloads))
        full.append(with_store(payloads, keys, fsync=True))
        normal.append(with_store(payloads, keys, fsync=False))
        sig.append(signature_only(payloads, keys))
    print(f"{opts.commands} commands per run, {opts.runs} runs; microseconds per command")
    report("signed: verify + replay (fsync FULL)", "us/command", full, base, baseline_name="unsigned path")
    print(f"  signed with synchronous=NORMAL: {median(normal):.1f} us/command")
    print(f"  signature + time checks only (no replay store): {median(sig):.1f} us/command")
    rate = 1e6 / median(full)
    print(f"  => {rate:,.0f} signed commands/s per device (commands arrive a few per hour)")


if __name__ == "__main__":
    main()
