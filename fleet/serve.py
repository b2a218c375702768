"""Run one fleet worker with its HTTP server (what ``cityedge fleet serve`` does).

Plug-ins are named ``module:callable`` and imported at start: RPC service factories taking no
argument (``--rpc dossier=fleet.gateway.dossier:make_service``), a command signer factory taking
the data directory (``--signer fleet.signer:load_fleet_signer``), and router factories taking
the service (``--router fleet.enroll:router``).
"""

from __future__ import annotations

import contextlib
import importlib
import ipaddress
import logging
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter

from fleet.commands import CommandSigner
from fleet.config import FleetConfig, FleetConfigError
from fleet.rpc import RpcRegistry, RpcService, default_registry
from fleet.service import FleetService

if TYPE_CHECKING:
    from fleet.auth.oidc import OidcConfig
    from fleet.releases.serve import TimestampResigner

log = logging.getLogger(__name__)


def load_object(spec: str) -> Any:
    """Import ``module:attribute`` (raises FleetConfigError saying what is missing)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise FleetConfigError(f"plug-in {spec!r} must be written module:callable")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise FleetConfigError(f"plug-in {spec!r}: cannot import {module_name!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise FleetConfigError(f"plug-in {spec!r}: {module_name} has no {attr!r}") from exc


def parse_http(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise FleetConfigError(f"--http {value!r} must be HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]") or "127.0.0.1", int(port)


def build_registry(rpc_specs: Sequence[str]) -> RpcRegistry:
    registry = default_registry()
    for spec in rpc_specs:
        name, sep, target = spec.partition("=")
        if not sep:
            raise FleetConfigError(f"--rpc {spec!r} must be NAME=module:factory")
        factory = load_object(target)
        try:
            service: RpcService = factory()
        except Exception as exc:  # a plug-in: report whatever it raised, in words
            raise FleetConfigError(f"--rpc {spec!r}: could not build the service: {exc}") from exc
        registry.register(name, service)
    return registry


def build_signer(spec: str | None, data_dir: Path) -> CommandSigner | None:
    """``module:factory`` called with the fleet data directory (e.g. fleet.signer:load_fleet_signer).

    Without ``--signer``, the fleet signs with its key ring when ``DATA_DIR/keys`` has one (made by
    ``cityedge fleet keys init``), and otherwise sends unsigned commands, which only devices
    configured for development accept; it says so in the log.
    """
    if spec is None:
        from fleet.signer import KeyRingError, keys_dir, load_fleet_signer

        if not keys_dir(data_dir).exists():
            log.warning(
                "no fleet signing keys in %s: commands go out unsigned and enrolled devices will reject "
                "them (run `cityedge fleet keys init --root-out ROOT_KEY --data-dir %s`)",
                keys_dir(data_dir),
                data_dir,
            )
            return None
        try:
            return load_fleet_signer(data_dir)
        except (KeyRingError, OSError) as exc:
            where = keys_dir(data_dir)
            raise FleetConfigError(f"fleet signing keys in {where} cannot be used: {exc}") from exc
    factory = load_object(spec)
    try:
        signer: CommandSigner = factory(data_dir)
    except Exception as exc:  # a plug-in: report whatever it raised, in words
        raise FleetConfigError(f"--signer {spec!r}: could not load the signing key: {exc}") from exc
    return signer


def build_releases(repo: Path) -> tuple[APIRouter, TimestampResigner]:
    """The ``/tuf/`` router and the (not yet started) timestamp re-signer of a release repository."""
    from fleet.releases.serve import TimestampResigner, releases_router

    if not (repo / "metadata" / "root.json").is_file():
        raise FleetConfigError(
            f"--releases {repo} is not a release repository (no metadata/root.json): "
            "create it with `cityedge release keys init`"
        )
    return releases_router(repo), TimestampResigner(repo)


@contextlib.contextmanager
def _quiet_signals() -> Iterator[None]:
    """uvicorn re-raises SIGINT/SIGTERM after its graceful exit; let that be a no-op so the
    worker can drain and stop instead of dying before it commits."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass(frozen=True)
class HttpTls:
    """The HTTPS listener's certificate and key (from the city PKI: ``fleet pki server``), or
    ``insecure`` to allow plain HTTP on a non-loopback address anyway."""

    cert: Path | None = None
    key: Path | None = None
    insecure: bool = False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, tls: HttpTls | None) -> None:
    """Refuse plain HTTP on a non-loopback address unless ``insecure`` (then warn at every start)."""
    tls = tls or HttpTls()
    if (tls.cert is None) != (tls.key is None):
        raise FleetConfigError("--tls-cert and --tls-key go together")
    for path in (tls.cert, tls.key):
        if path is not None and not path.is_file():
            raise FleetConfigError(f"{path}: no such file (the HTTPS certificate and key)")
    if tls.cert is not None or is_loopback(host):
        return
    if not tls.insecure:
        raise FleetConfigError(
            f"refusing to serve the fleet API on {host} without TLS: give --tls-cert and --tls-key "
            "(e.g. from `cityedge fleet pki server`), or --insecure if a TLS proxy sits in front"
        )
    log.warning(
        "INSECURE: the fleet API and dashboard on %s are plain HTTP: tokens and sessions cross the "
        "network unencrypted (--insecure)",
        host,
    )


def serve(
    config: FleetConfig,
    *,
    signer: CommandSigner | None = None,
    rpc_registry: RpcRegistry | None = None,
    router_factories: Sequence[Callable[[FleetService], APIRouter]] = (),
    releases_dir: Path | None = None,
    oidc: OidcConfig | None = None,
    tls: HttpTls | None = None,
) -> None:
    """Start the worker and serve HTTP until SIGINT/SIGTERM; then drain and stop.

    With ``releases_dir`` the release repository is served under ``/tuf/`` and its timestamp is
    re-signed in the background while the service runs. With ``oidc`` people sign in to the
    dashboard through the city's identity provider, without it with an API token (``/login``);
    failed sign-ins are rate-limited per address in any case."""
    import uvicorn

    from fleet.api import create_app

    check_exposure(config.http_host, tls)
    releases = build_releases(releases_dir) if releases_dir is not None else None
    service = FleetService(config, signer=signer, rpc_registry=rpc_registry)
    service.start()
    try:
        routers = [factory(service) for factory in router_factories]
        if releases is not None:
            routers.append(releases[0])
            releases[1].start()
        app = create_app(service, extra_routers=routers)
        if oidc is not None:
            from fleet.auth.session import install_oidc

            install_oidc(app, oidc)
        else:
            from fleet.auth.tokensignin import install_token_signin

            https = tls is not None and tls.cert is not None
            install_token_signin(app, secure_cookies=https)
        from fleet.auth.oidc import RateLimitSettings
        from fleet.auth.ratelimit import install_signin_limit

        limits = oidc.rate_limit if oidc is not None else RateLimitSettings()
        install_signin_limit(app, limits.failures, limits.window_s)  # outermost: added last
        tls_options: dict[str, Any] = {}
        if tls is not None and tls.cert is not None and tls.key is not None:
            tls_options = {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)}
        server = uvicorn.Server(
            uvicorn.Config(
                app, host=config.http_host, port=config.http_port, log_level="warning", **tls_options
            )
        )
        scheme = "https" if tls_options else "http"
        log.info("fleet API and dashboard on %s://%s:%d/", scheme, config.http_host, config.http_port)
        with _quiet_signals():
            server.run()
    finally:
        if releases is not None:
            releases[1].stop()
        service.stop()
        log.info("fleet worker %s stopped", config.worker_id)
