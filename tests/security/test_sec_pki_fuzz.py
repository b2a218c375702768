"""Parsing robustness: whatever bytes arrive as a CSR or certificate, the PKI answers with a
PKIError (a clear message), never another exception."""

from __future__ import annotations

import base64
import contextlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.pki import CityPKI, PKIError
from hw.keystore import FileKeyStore

DEV = "kiosk-hn-btl-0001"


def _armored(label: str) -> st.SearchStrategy[bytes]:
    body = st.binary(max_size=600).map(lambda b: base64.encodebytes(b))
    return body.map(lambda b: f"-----BEGIN {label}-----\n".encode() + b + f"-----END {label}-----\n".encode())


GARBAGE = st.one_of(
    st.binary(max_size=800),
    st.text(max_size=400).map(lambda t: t.encode("utf-8", "surrogatepass")),
    _armored("CERTIFICATE REQUEST"),
    _armored("CERTIFICATE"),
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> CityPKI:
    return CityPKI.init(tmp_path_factory.mktemp("fuzz") / "pki")


@pytest.fixture(scope="module")
def good(pki: CityPKI, tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    store = FileKeyStore.create(tmp_path_factory.mktemp("dev") / "k.pem")
    csr = store.csr(DEV)
    return csr, pki.sign_device_csr(csr, DEV)


def _mutations(data: bytes) -> st.SearchStrategy[bytes]:
    """The valid PEM with bytes flipped, cut or inserted."""

    def flip(args: tuple[int, int]) -> bytes:
        pos, val = args
        b = bytearray(data)
        b[pos % len(b)] = val
        return bytes(b)

    return st.one_of(
        st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)).map(flip),
        st.integers(0, len(data)).map(lambda n: data[:n]),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=GARBAGE)
def test_garbage_csr_gives_pki_error(pki: CityPKI, blob: bytes) -> None:
    with pytest.raises(PKIError):
        pki.sign_device_csr(blob, DEV)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=GARBAGE)
def test_garbage_certificate_gives_pki_error(pki: CityPKI, good: tuple[bytes, bytes], blob: bytes) -> None:
    with pytest.raises(PKIError):
        pki.check_certificate(blob)
    with pytest.raises(PKIError):
        pki.renew(good[0], blob)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_csr_and_cert_never_crash(
    pki: CityPKI, good: tuple[bytes, bytes], data: st.DataObject
) -> None:
    csr = data.draw(_mutations(good[0]))
    cert = data.draw(_mutations(good[1]))
    for call in (lambda: pki.renew(csr, good[1]), lambda: pki.check_certificate(cert)):
        with contextlib.suppress(PKIError):
            call()


def test_csr_with_invalid_version_is_a_pki_error(pki: CityPKI, good: tuple[bytes, bytes]) -> None:
    """Found by hypothesis: cryptography raises InvalidVersion, which is not a ValueError."""
    bad = bytearray(good[0])
    bad[47] = 66  # the version field of the CSR
    with pytest.raises(PKIError, match="not a readable PEM CSR"):
        pki.sign_device_csr(bytes(bad), DEV)


def test_unicode_text_input_is_accepted_as_str(pki: CityPKI, tmp_path: Path) -> None:
    store = FileKeyStore.create(tmp_path / "k.pem")
    pki.sign_device_csr(store.csr("cam-hn-0002").decode(), "cam-hn-0002")
    with pytest.raises(PKIError):
        pki.sign_device_csr("Ω\udcff not pem", "cam-hn-0003")
