"""Errors of the release tooling: each message says what is wrong and what to do about it."""

from __future__ import annotations


class ReleaseError(Exception):
    """Base class: a release could not be built, published or served."""


class BundleError(ReleaseError):
    """A bundle file is not a valid release bundle (bad tar, unexpected member, object that does
    not match the manifest, path traversal, link, missing object)."""


class BuildError(ReleaseError):
    """A release bundle could not be built (wheel build failed, model or file missing)."""


class RepositoryError(ReleaseError):
    """The repository directory is missing, damaged or in a state that refuses the operation."""


class SigningKeyError(ReleaseError):
    """A signing key file is missing, unreadable, of the wrong kind or not trusted for the role."""


class ThresholdError(ReleaseError):
    """Fewer valid signing keys were given than the role's threshold needs."""


class ConflictError(ReleaseError):
    """The operation would change something that must never change (e.g. republishing a version
    with different content)."""


class NotFound(ReleaseError):
    """The release (or role) named is not in the repository."""
