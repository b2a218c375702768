"""Permissions and roles: the single table of who may do what (see docs/security-access.md)."""

from __future__ import annotations

from collections.abc import Mapping

DEVICES_READ = "devices:read"
COMMANDS_SEND = "commands:send"
CLAIMS_CREATE = "claims:create"
RELEASES_MANAGE = "releases:manage"
EVIDENCE_READ = "evidence:read"
SECURITY_MANAGE = "security:manage"
TOKENS_MANAGE = "tokens:manage"
AUDIT_READ = "audit:read"
METRICS_READ = "metrics:read"

PERMISSIONS: frozenset[str] = frozenset(
    {
        DEVICES_READ,
        COMMANDS_SEND,
        CLAIMS_CREATE,
        RELEASES_MANAGE,
        EVIDENCE_READ,
        SECURITY_MANAGE,
        TOKENS_MANAGE,
        AUDIT_READ,
        METRICS_READ,
    }
)
"""Permissions a person's role can hold."""

PUBLIC = "public"
"""Declared (never implied) on routes that need no credential: health, enrolment (which checks a
claim token or the device key itself), /tuf (signed metadata), sign-in pages and static files."""

EVIDENCE_UPLOAD = "evidence:upload"
DEVICE_ROLE = "device"
DEVICE_PERMISSIONS: frozenset[str] = frozenset({EVIDENCE_UPLOAD})
"""Permissions only a device (authenticated by its certificate) holds; no person's role has them,
admin included, so nobody can upload evidence as if they were a camera."""

_VIEWER = frozenset({DEVICES_READ, METRICS_READ})
_OPERATOR = _VIEWER | {COMMANDS_SEND, CLAIMS_CREATE}

ROLES: Mapping[str, frozenset[str]] = {
    "viewer": _VIEWER,
    "operator": _OPERATOR,
    "release-manager": _OPERATOR | {RELEASES_MANAGE},
    "evidence-officer": _VIEWER | {EVIDENCE_READ},
    "security-admin": _VIEWER | {SECURITY_MANAGE, TOKENS_MANAGE},
    "auditor": frozenset({AUDIT_READ}),
    "admin": PERMISSIONS,
}
"""Roles of people and scripts (tokens, OIDC role claims), least privilege first."""

ALL_DECLARABLE: frozenset[str] = PERMISSIONS | DEVICE_PERMISSIONS | {PUBLIC}
"""Everything a route may declare."""


def allowed(role: str, permission: str) -> bool:
    """Whether ``role`` holds ``permission`` (PUBLIC: everyone). Unknown roles hold nothing."""
    if permission == PUBLIC:
        return True
    if role == DEVICE_ROLE:
        return permission in DEVICE_PERMISSIONS
    return permission in ROLES.get(role, frozenset())


def check_role(role: str) -> str:
    """``role`` if it is a person's role, else ValueError naming the roles there are."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; the roles are: {', '.join(ROLES)}")
    return role
