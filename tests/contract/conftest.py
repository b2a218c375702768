"""Contract suite fixtures: one broker per module, one device per implementation, a signing city.

The helpers of the agent, simulator and fleet tests are shared from their folders.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
for _folder in ("agent", "sim", "fleet"):
    if str(TESTS / _folder) not in sys.path:
        sys.path.insert(0, str(TESTS / _folder))

from contract_helpers import IMPLS, City, Device, fleet_keys, start_device  # noqa: E402

from fleet.broker import MosquittoBroker  # noqa: E402
from fleet.signer import load_fleet_signer  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "impls(*names): run a contract test only against these implementations (default: all)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that uses ``device`` runs once per implementation (or those its ``impls`` mark names)."""
    if "impl" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("impls")
        names = marker.args if marker is not None else IMPLS
        metafunc.parametrize("impl", names, scope="module")


@pytest.fixture(scope="module")
def module_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    broker = MosquittoBroker(tmp_path_factory.mktemp("broker"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fleet data directory with a key ring (``cityedge fleet keys init``); devices are enrolled in it."""
    folder = tmp_path_factory.mktemp("fleet")
    fleet_keys(folder)
    return folder


@pytest.fixture(scope="module")
def device(
    impl: str,
    module_broker: MosquittoBroker,
    fleet_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Device]:
    """One connected device of ``impl``, shared by the module's tests."""
    dut = start_device(impl, module_broker, tmp_path_factory.mktemp(impl), f"ct{impl}", fleet_dir)
    try:
        yield dut
    finally:
        dut.close()


@pytest.fixture(scope="module")
def city(module_broker: MosquittoBroker, device: Device, fleet_dir: Path) -> Iterator[City]:
    """The city's view of ``device``, recording from the start of the module; it signs with the
    fleet's active key, as ``fleet serve`` does."""
    probe = City(module_broker, device.device_id, load_fleet_signer(fleet_dir))
    try:
        yield probe
    finally:
        probe.close()
