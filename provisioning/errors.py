"""What can go wrong for a technician, in words they can act on.

Every error has a ``message`` (what happened) and a ``hint`` (what to do next); the exit code of
``cityedge provision`` tells scripts which kind it was.
"""

from __future__ import annotations


class ProvisionError(Exception):
    """Base: something the technician must fix before the device can join the fleet."""

    exit_code = 1
    hint = "read the message above; ask the fleet operator if it does not help"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint


class WrongTime(ProvisionError):
    """The device clock is not set (or far off): TLS and expiry cannot be checked."""

    exit_code = 3
    hint = (
        "set the time first: connect the network so NTP can sync (sudo timedatectl set-ntp true), "
        "or set it by hand (sudo date -u -s 'YYYY-MM-DD HH:MM'), then run the command again"
    )


class NoNetwork(ProvisionError):
    """The fleet (or the broker) cannot be reached."""

    exit_code = 4
    hint = "check the network cable / Wi-Fi / SIM, the fleet address, and that this site may reach it"


class ClaimProblem(ProvisionError):
    """The claim token is unknown, used, expired, or for another role or site."""

    exit_code = 5
    hint = "ask the fleet operator for a new claim token (cityedge fleet claim create --role ... --site ...)"


class CertificateProblem(ProvisionError):
    """The certificate is missing, not yet valid, expired, revoked, or not from the city."""

    exit_code = 6
    hint = "check the device time; if it is right, re-enrol the device with a new claim token"


class BrokerUnreachable(ProvisionError):
    exit_code = 7
    hint = "check the network and the broker address; if the certificate was revoked, re-enrol"


class NotEnrolled(ProvisionError):
    exit_code = 8
    hint = "enrol the device first: cityedge provision enroll --claim TOKEN --role ... --site ... --fleet URL"


class AlreadyEnrolled(ProvisionError):
    exit_code = 9
    hint = "to enrol it again, decommission it first: cityedge provision decommission"


class FleetRefused(ProvisionError):
    """The fleet answered with an error the other classes do not cover."""

    exit_code = 10
