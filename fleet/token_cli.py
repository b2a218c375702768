"""``cityedge fleet token create|list|revoke`` and ``cityedge fleet audit-trail``.

Both work straight on the fleet database (``--db URL``), not through the API: a token is created
before anyone can call the API, and an auditor reads and verifies the trail offline.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import typer

DbOpt = Annotated[
    str,
    typer.Option(
        "--db",
        envvar="CITYEDGE_FLEET_DB",
        help="Fleet database URL, as given to `fleet serve --db` (env CITYEDGE_FLEET_DB).",
        show_envvar=True,
    ),
]
DEFAULT_DB = "sqlite:///var/fleet.db"
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _engine(db: str, *, create: bool = False) -> Any:
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from fleet.db import create_schema, make_engine

    try:
        engine = make_engine(db, immediate=True)
        if create:
            create_schema(engine)
    except (ArgumentError, SQLAlchemyError) as exc:
        raise _fail(
            f"cannot open the fleet database {_safe_url(db)}: {exc.__class__.__name__}: {exc}"
        ) from exc
    return engine


def _safe_url(db: str) -> str:
    """The URL without its password (never print a secret)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(db).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unreadable URL)"


def _db_error(db: str, exc: Exception) -> typer.Exit:
    return _fail(
        f"the fleet database {_safe_url(db)} could not be read ({exc.__class__.__name__}); is this the URL "
        "`fleet serve --db` uses, and has the fleet started on it once?"
    )


def token_create_cmd(
    role: Annotated[str, typer.Option(help="viewer, operator, release-manager, evidence-officer, ...")],
    name: Annotated[str, typer.Option(help="A name for the token (who or what uses it), e.g. ci-deploy.")],
    expires: Annotated[str, typer.Option(help="Lifetime: 90d, 12h, 2w, ... or 'never'.")] = "90d",
    as_json: JsonOpt = False,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Create an API token. It is printed once: only its hash is kept."""
    from fleet.auth.tokens import TokenError, issue, parse_duration
    from protocol.timefmt import utc_now

    try:
        lifetime = parse_duration(expires)
    except TokenError as exc:
        raise _fail(str(exc)) from exc
    engine = _engine(db, create=True)
    try:
        token, info = issue(engine, name=name, role=role, expires=lifetime)
    except TokenError as exc:
        raise _fail(str(exc)) from exc
    finally:
        engine.dispose()
    if as_json:
        typer.echo(json.dumps({"token": token, **info.to_json(utc_now())}, indent=1))
        return
    typer.echo(token)
    until = f"until {info.to_json(utc_now())['expires_at']}" if info.expires_at else "with no expiry"
    typer.echo(
        f"token {info.name!r} (role {info.role}) valid {until}. It is shown only now: keep it in a file "
        "with mode 0600 (--token-file) or in CITYEDGE_TOKEN.",
        err=True,
    )


def token_list_cmd(as_json: JsonOpt = False, db: DbOpt = DEFAULT_DB) -> None:
    """List API tokens (names, roles, state; never the tokens)."""
    from sqlalchemy.exc import SQLAlchemyError

    from fleet.auth.tokens import list_tokens
    from protocol.timefmt import utc_now

    engine = _engine(db)
    try:
        tokens = list_tokens(engine)
    except SQLAlchemyError as exc:
        raise _db_error(db, exc) from exc
    finally:
        engine.dispose()
    now = utc_now()
    rows = [t.to_json(now) for t in tokens]
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    for row in rows:
        typer.echo(
            f"{row['name']:<24} {row['role']:<17} {row['state']:<8} "
            f"expires {row['expires_at'] or 'never':<21} last used {row['last_used_at'] or 'never'}"
        )


def token_revoke_cmd(
    name: Annotated[str, typer.Argument(help="Name of the token to revoke.")],
    as_json: JsonOpt = False,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Revoke an API token (running fleet workers stop accepting it within seconds)."""
    from sqlalchemy.exc import SQLAlchemyError

    from fleet.auth.tokens import DEFAULT_CACHE_S, TokenError, revoke
    from protocol.timefmt import utc_now

    engine = _engine(db)
    try:
        info = revoke(engine, name)
    except TokenError as exc:
        raise _fail(str(exc)) from exc
    except SQLAlchemyError as exc:
        raise _db_error(db, exc) from exc
    finally:
        engine.dispose()
    if as_json:
        typer.echo(json.dumps(info.to_json(utc_now()), indent=1))
    else:
        typer.echo(
            f"token {name!r} revoked at {info.to_json(utc_now())['revoked_at']}; running fleet workers "
            f"refuse it within {DEFAULT_CACHE_S:g} s"
        )


def _parse_since(value: str) -> datetime:
    from datetime import timedelta

    from fleet.auth.tokens import TokenError, parse_duration
    from protocol.timefmt import parse_ts, utc_now

    try:
        return parse_ts(value)
    except ValueError:
        pass
    try:
        ago = parse_duration(value)
    except TokenError:
        ago = None
    if ago is None or ago <= timedelta(0):
        raise _fail(f"--since {value!r}: give an RFC 3339 time (2026-11-22T21:30:00Z) or an age (24h, 7d)")
    return utc_now() - ago


def _parse_anchor(value: str) -> Any:
    from fleet.auth.trail import Head

    seq, sep, digest = value.partition(":")
    if not sep or not seq.isdigit() or len(digest) != 64:
        raise _fail(f"--anchor {value!r}: give SEQ:HASH as `audit-trail --verify` printed it")
    return Head(int(seq), digest.lower())


def audit_trail_cmd(
    since: Annotated[
        str | None, typer.Option(help="Only entries at or after this time (RFC 3339) or age (24h, 7d).")
    ] = None,
    as_json: JsonOpt = False,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify", help="Check the whole hash chain; exit 1 on any edited, reordered or deleted entry."
        ),
    ] = False,
    anchor: Annotated[
        str | None,
        typer.Option(
            help="With --verify: SEQ:HASH of the head noted at an earlier check (finds cut-off ends)."
        ),
    ] = None,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Read the audit trail straight from the fleet database (with --verify: check it)."""
    from sqlalchemy.exc import SQLAlchemyError

    from fleet.auth import trail

    head_anchor = _parse_anchor(anchor) if anchor else None
    engine = _engine(db)
    try:
        if verify:
            problems, head = trail.verify_chain(engine, anchor=head_anchor)
        else:
            rows = trail.read(engine, _parse_since(since) if since else None)
    except SQLAlchemyError as exc:
        raise _db_error(db, exc) from exc
    finally:
        engine.dispose()
    if verify:
        _report_verify(problems, head, as_json)
        return
    if as_json:
        typer.echo(json.dumps([trail.to_json(r) for r in rows], indent=1))
        return
    for row in rows:
        entry = trail.to_json(row)
        who = f"{entry['subject']} ({entry['role'] or '-'})"
        devices = ",".join(entry["devices"]) or "-"
        typer.echo(
            f"{entry['seq']:>7} {entry['ts']} {who} {entry['action']} [{devices}] from {entry['source']}: "
            f"{entry['outcome']}"
        )


def _report_verify(problems: list[str], head: Any, as_json: bool) -> None:
    head_text = f"{head.seq}:{head.hash}" if head is not None else None
    if as_json:
        typer.echo(json.dumps({"ok": not problems, "problems": problems, "head": head_text}, indent=1))
    elif problems:
        for problem in problems:
            typer.echo(f"TAMPERED: {problem}", err=True)
        typer.echo(f"{len(problems)} problem(s) in the audit trail", err=True)
    elif head is None:
        typer.echo("the audit trail is empty")
    else:
        typer.echo(
            f"audit trail intact: {head.seq} entries; head {head_text} "
            "(note it: pass it as --anchor next time to detect entries cut off the end)"
        )
    if problems:
        raise typer.Exit(1)


def register_access(fleet_app: typer.Typer) -> None:
    """Add ``token create|list|revoke`` and ``audit-trail`` to the ``fleet`` command group."""
    token_app = typer.Typer(help="API tokens for scripts (shown once, stored hashed).", no_args_is_help=True)
    token_app.command("create")(token_create_cmd)
    token_app.command("list")(token_list_cmd)
    token_app.command("revoke")(token_revoke_cmd)
    fleet_app.add_typer(token_app, name="token")
    fleet_app.command("audit-trail")(audit_trail_cmd)
