"""``cityedge fleet``: run the central service, and talk to its API from a terminal."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

ApiOpt = Annotated[
    str,
    typer.Option(
        "--api", envvar="CITYEDGE_FLEET_URL", help="Fleet API URL (env CITYEDGE_FLEET_URL).", show_envvar=True
    ),
]
DEFAULT_API = "http://127.0.0.1:8080"
TokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        help="File holding the API token (mode 0600); default: the CITYEDGE_TOKEN environment variable.",
    ),
]


def api_client(api: str, token_file: Path | None) -> Any:
    """A FleetClient of ``api`` carrying the token of ``token_file`` or CITYEDGE_TOKEN."""
    from fleet.client import FleetClient, TokenFileError, load_token

    try:
        return FleetClient(api, token=load_token(token_file))
    except TokenFileError as exc:
        raise _fail(str(exc)) from exc


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _parse_args(pairs: list[str]) -> dict[str, Any]:
    """``k=v`` pairs; a value that reads as JSON (5, true, {"a":1}) is taken as JSON, else as text."""
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise _fail(f"--arg {pair!r} must be KEY=VALUE")
        try:
            args[key] = json.loads(value)
        except json.JSONDecodeError:
            args[key] = value
    return args


def _writer_mode(value: str) -> bool:
    if value not in ("process", "thread"):
        raise _fail(f"--writer must be 'process' or 'thread', not {value!r}")
    return value == "process"


def serve_cmd(
    broker: Annotated[
        str,
        typer.Option(
            envvar="CITYEDGE_FLEET_BROKER", help="Broker URL: mqtt://HOST:PORT or mqtts://HOST:PORT."
        ),
    ] = ("mqtt://127.0.0.1:1883"),
    db: Annotated[
        str, typer.Option(envvar="CITYEDGE_FLEET_DB", help="SQLAlchemy database URL.")
    ] = "sqlite:///var/fleet.db",
    http: Annotated[
        str, typer.Option(envvar="CITYEDGE_FLEET_HTTP", help="HOST:PORT for the REST API and dashboard.")
    ] = "127.0.0.1:8080",
    share: Annotated[
        bool,
        typer.Option(
            "--share/--no-share",
            envvar="CITYEDGE_FLEET_SHARE",
            help="Split the stream with other workers ($share/...).",
        ),
    ] = False,
    group: Annotated[
        str, typer.Option(envvar="CITYEDGE_FLEET_GROUP", help="Shared-subscription group (with --share).")
    ] = "fleet",
    worker_id: Annotated[
        str | None,
        typer.Option(
            envvar="CITYEDGE_FLEET_WORKER_ID",
            help="Stable MQTT client id of this worker (default fleet-HOSTNAME).",
        ),
    ] = None,
    topic_prefix: Annotated[
        str, typer.Option(envvar="CITYEDGE_FLEET_TOPIC_PREFIX", help="Topic prefix of the contract.")
    ] = "city/v1",
    ca: Annotated[
        Path | None, typer.Option(envvar="CITYEDGE_FLEET_CA", help="CA certificate of the broker (mqtts).")
    ] = None,
    cert: Annotated[
        Path | None, typer.Option(envvar="CITYEDGE_FLEET_CERT", help="Fleet certificate (mTLS).")
    ] = None,
    key: Annotated[
        Path | None, typer.Option(envvar="CITYEDGE_FLEET_KEY", help="Fleet private key (mTLS).")
    ] = None,
    max_payload: Annotated[int, typer.Option(help="Largest accepted payload in bytes.")] = 256 * 1024,
    rpc: Annotated[
        list[str] | None, typer.Option(help="Extra RPC service NAME=module:factory (repeatable).")
    ] = None,
    signer: Annotated[
        str | None,
        typer.Option(
            envvar="CITYEDGE_FLEET_SIGNER",
            help="Command signer factory module:callable(data_dir), e.g. fleet.signer:load_fleet_signer.",
        ),
    ] = None,
    data_dir: Annotated[
        Path, typer.Option(envvar="CITYEDGE_FLEET_DATA_DIR", help="Fleet data directory (signing keys).")
    ] = Path("var/fleet"),
    router: Annotated[
        list[str] | None, typer.Option(help="Extra API router factory module:callable(service).")
    ] = None,
    writer: Annotated[
        str,
        typer.Option(
            envvar="CITYEDGE_FLEET_WRITER",
            help="process: decode and commit in a writer process (faster); thread: in-process.",
        ),
    ] = "process",
    log_level: Annotated[
        str, typer.Option(envvar="CITYEDGE_FLEET_LOG_LEVEL", help="debug, info, warning or error.")
    ] = "info",
    releases: Annotated[
        Path | None,
        typer.Option(
            "--releases", help="Release repository to serve under /tuf/ (its timestamp is kept re-signed)."
        ),
    ] = None,
    oidc_config: Annotated[
        Path | None,
        typer.Option(
            "--oidc-config",
            envvar="CITYEDGE_FLEET_OIDC_CONFIG",
            help="TOML file naming the identity provider people sign in with (docs/security-access.md).",
        ),
    ] = None,
    pki: Annotated[
        Path | None,
        typer.Option(
            "--pki",
            envvar="CITYEDGE_FLEET_PKI",
            help="City PKI directory: evidence is checked against its device keys, revoked devices are "
            "shown as revoked, and its CRL is re-signed before it goes stale.",
        ),
    ] = None,
    pki_db: Annotated[
        str | None,
        typer.Option(
            "--pki-db",
            envvar="CITYEDGE_FLEET_PKI_DB",
            help="Database URL of the PKI inventory when the PKI directory is elsewhere.",
        ),
    ] = None,
    broker_dir: Annotated[
        Path | None,
        typer.Option(
            "--broker-dir", help="Broker directory (fleet broker-config) that receives each new CRL."
        ),
    ] = None,
    broker_reload: Annotated[
        str | None,
        typer.Option(
            "--broker-reload", help="Tell the broker to re-read the CRL: pidfile:PATH or systemd:UNIT."
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            "--tls-cert",
            envvar="CITYEDGE_FLEET_TLS_CERT",
            help="HTTPS certificate of the API and dashboard (PEM).",
        ),
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", envvar="CITYEDGE_FLEET_TLS_KEY", help="Its private key (PEM).")
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            envvar="CITYEDGE_FLEET_INSECURE",
            help="Allow plain HTTP on a non-loopback address (behind a TLS proxy only).",
        ),
    ] = False,
    event_retention_days: Annotated[
        int,
        typer.Option(envvar="CITYEDGE_FLEET_EVENT_RETENTION_DAYS", help="Days events are kept (0: forever)."),
    ] = 90,
    telemetry_retention_days: Annotated[
        int,
        typer.Option(
            envvar="CITYEDGE_FLEET_TELEMETRY_RETENTION_DAYS",
            help="Days the 1-minute telemetry history is kept.",
        ),
    ] = 7,
    rollout_backend: Annotated[
        str, typer.Option("--rollout-backend", help="ota (our updater) or balena (balenaOS devices).")
    ] = "ota",
    balena_fleet: Annotated[
        str | None, typer.Option("--balena-fleet", help="balenaCloud fleet slug (--rollout-backend balena).")
    ] = None,
    balena_host: Annotated[str, typer.Option("--balena-host", help="balena API host.")] = "balena-cloud.com",
    balena_token_file: Annotated[
        Path | None, typer.Option("--balena-token-file", help="File holding the balena API key.")
    ] = None,
    balena_poll: Annotated[
        float, typer.Option("--balena-poll", help="Seconds between reads of balena device status.")
    ] = 30.0,
) -> None:
    """Run a fleet worker: ingest from the broker, store, serve the API and dashboard.

    Every option can also be set by its environment variable (CITYEDGE_FLEET_BROKER, _DB, _HTTP,
    _SHARE, ...: see --help), as a container sets them."""
    from pydantic import ValidationError

    from fleet.auth.oidc import OidcConfigError, load_oidc_config
    from fleet.config import FleetConfig, FleetConfigError
    from fleet.evidence import evidence_router_for
    from fleet.ingest import IngestError
    from fleet.procwriter import WriterProcessError
    from fleet.serve import HttpTls, build_registry, build_signer, load_object, parse_http, serve

    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        host, port = parse_http(http)
        settings: dict[str, Any] = {
            "broker_url": broker,
            "db_url": db,
            "http_host": host,
            "http_port": port,
            "share": share,
            "group": group,
            "topic_prefix": topic_prefix,
            "ca_file": ca,
            "cert_file": cert,
            "key_file": key,
            "max_payload_bytes": max_payload,
            "data_dir": data_dir,
            "writer_process": _writer_mode(writer),
            "pki_dir": pki,
            "pki_db_url": pki_db,
            "broker_dir": broker_dir,
            "broker_reload": broker_reload,
            "event_retention_days": event_retention_days,
            "telemetry_retention_days": telemetry_retention_days,
            "rollout_backend": rollout_backend,
            "balena_fleet": balena_fleet,
            "balena_host": balena_host,
            "balena_token_file": balena_token_file,
            "balena_poll_s": balena_poll,
        }
        if worker_id is not None:
            settings["worker_id"] = worker_id
        config = FleetConfig(**settings)
        serve(
            config,
            signer=build_signer(signer, config.data_dir),
            rpc_registry=build_registry(rpc or []),
            router_factories=[evidence_router_for, *(load_object(spec) for spec in router or [])],
            releases_dir=releases,
            oidc=load_oidc_config(oidc_config) if oidc_config is not None else None,
            tls=HttpTls(tls_cert, tls_key, insecure),
        )
    except (FleetConfigError, IngestError, WriterProcessError, OidcConfigError) as exc:
        raise _fail(str(exc)) from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        raise _fail(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from exc


def devices_cmd(
    api: ApiOpt = DEFAULT_API,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    role: Annotated[str | None, typer.Option(help="Only devices with this role.")] = None,
    online: Annotated[bool, typer.Option("--online", help="Only devices that are online.")] = False,
    site: Annotated[str | None, typer.Option(help="Only devices of this site/ward (e.g. hn-gbt).")] = None,
    status: Annotated[
        str | None, typer.Option(help="Only devices in this state: online, silent, offline, revoked.")
    ] = None,
    search: Annotated[str | None, typer.Option(help="Only devices whose id contains this.")] = None,
    token_file: TokenFileOpt = None,
) -> None:
    """List the devices the fleet knows (fetched a page at a time)."""
    from fleet.client import FleetApiError
    from fleet.clifmt import devices_table, print_table

    try:
        with api_client(api, token_file) as client:
            filters = {"site": site, "status": status, "q": search}
            rows = client.devices(
                role=role, online=True if online else None, **{k: v for k, v in filters.items() if v}
            )
    except FleetApiError as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        print_table(devices_table(rows))


def command_cmd(
    device: Annotated[str, typer.Argument(help="Device id.")],
    name: Annotated[str, typer.Argument(help="Command name (ping, reboot, restart, set_config, ...).")],
    arg: Annotated[list[str] | None, typer.Option("--arg", help="Argument KEY=VALUE (repeatable).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the device's answer.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 30.0,
    ttl: Annotated[float | None, typer.Option(help="Command lifetime in seconds.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    api: ApiOpt = DEFAULT_API,
    token_file: TokenFileOpt = None,
) -> None:
    """Send a command to a device (with --wait: its result; exit 1 if not ok, 2 on timeout)."""
    from fleet.client import FleetApiError

    args = _parse_args(arg or [])
    try:
        with api_client(api, token_file) as client:
            command_id = client.send_command(device, name, args, ttl)
            state = client.wait_command(command_id, timeout) if wait else {"id": command_id}
    except FleetApiError as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps(state, indent=2))
    elif not wait:
        typer.echo(command_id)
    else:
        detail = (
            json.dumps(state.get("result") or {}) if state["status"] == "ok" else state.get("error") or ""
        )
        typer.echo(f"{command_id} {state['status']} {detail}".rstrip())
    if wait:
        status = state["status"]
        if status == "pending":
            raise _fail(f"no answer from {device} within {timeout:g}s", 2)
        if status != "ok":
            raise typer.Exit(1)


def command_result_cmd(
    command_id: Annotated[str, typer.Argument(help="Command id (printed by `fleet command`).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    api: ApiOpt = DEFAULT_API,
    token_file: TokenFileOpt = None,
) -> None:
    """Show an earlier command's state and result (exit 1 if it did not succeed, 2 while pending)."""
    from fleet.client import FleetApiError

    try:
        with api_client(api, token_file) as client:
            state = client.command(command_id)
    except FleetApiError as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps(state, indent=2))
    else:
        detail = (
            json.dumps(state.get("result") or {}) if state["status"] == "ok" else state.get("error") or ""
        )
        answered = f" answered {state['answered_at']}" if state.get("answered_at") else ""
        typer.echo(
            f"{state['id']} {state['device']} {state['name']} {state['status']}{answered} {detail}".rstrip()
        )
    if state["status"] == "pending":
        raise typer.Exit(2)
    if state["status"] != "ok":
        raise typer.Exit(1)


def alerts_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    kind: Annotated[
        str | None, typer.Option(help="Only alerts of this kind (offline, overheat, ...).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="Only alerts of this device.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Resolved alerts too.")] = False,
    limit: Annotated[int, typer.Option(help="How many (newest first).")] = 100,
    api: ApiOpt = DEFAULT_API,
    token_file: TokenFileOpt = None,
) -> None:
    """List the alerts the fleet computed (open ones unless --all)."""
    from fleet.client import FleetApiError
    from fleet.clifmt import alerts_table, print_table

    try:
        with api_client(api, token_file) as client:
            rows = client.alerts(open_only=not all_, kind=kind, device=device, limit=limit)
    except FleetApiError as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        print_table(alerts_table(rows))


def events_cmd(
    device: Annotated[str, typer.Argument(help="Device id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    limit: Annotated[int, typer.Option(help="How many (newest first).")] = 50,
    kind: Annotated[str | None, typer.Option(help="Only events of this kind.")] = None,
    api: ApiOpt = DEFAULT_API,
    token_file: TokenFileOpt = None,
) -> None:
    """Show a device's latest events."""
    from fleet.client import FleetApiError
    from fleet.clifmt import events_table, print_table

    try:
        with api_client(api, token_file) as client:
            rows = client.events(device, limit=limit, kind=kind)
    except FleetApiError as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        print_table(events_table(device, rows))


def register(app: typer.Typer) -> None:
    fleet = typer.Typer(
        name="fleet",
        help="Central fleet service: ingest, device registry, commands, API and dashboard.",
        no_args_is_help=True,
    )
    fleet.command("serve")(serve_cmd)
    fleet.command("devices")(devices_cmd)
    fleet.command("command")(command_cmd)
    fleet.command("events")(events_cmd)
    fleet.command("command-result")(command_result_cmd)
    fleet.command("alerts")(alerts_cmd)
    from fleet.desired_cli import register_desired

    register_desired(fleet)  # set-release, clear-release, desired (OTA)
    from fleet.token_cli import register_access

    register_access(fleet)  # token create|list|revoke, audit-trail
    # Security tools beside the service: signing keys, PKI/broker/revocation/audit, claim tokens.
    from fleet.enroll_cli import register_claims
    from fleet.keys_cli import register_keys
    from fleet.pki_cli import register_pki

    register_keys(fleet)
    register_pki(fleet)
    register_claims(fleet)
    from fleet.emqx_cli import register_emqx

    register_emqx(fleet)  # emqx-config: the same access contract for an EMQX cluster
    app.add_typer(fleet, name="fleet")
    from fleet.rollouts.cli import register_rollout

    register_rollout(app)  # cityedge rollout start|status|pause|resume|abort
