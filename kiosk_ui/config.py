"""Settings of the kiosk web app (``cityedge kiosk serve``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class KioskSettings(BaseModel):
    """Everything the kiosk app needs to start; built by the CLI, passed down explicitly."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = Field(description="The agent's data directory (its local API socket lives there).")
    http_host: str = Field(default="127.0.0.1", description="Address to listen on (keep it loopback).")
    http_port: int = Field(default=8080, ge=0, le=65535, description="TCP port of the web app.")
    scanner: str | None = Field(
        default=None, description="QR scanner: a device path or any pyserial URL; None = no scanner."
    )
    printer: str | None = Field(
        default=None, description="Receipt printer: a device path or pyserial URL; None = no printer."
    )
    doccam: str | None = Field(
        default=None, description="Document camera: a V4L2 device path (/dev/video0); None = no camera."
    )
    simulate_peripherals: bool = Field(
        default=False, description="Simulated scanner, printer and document camera (demo, development)."
    )
    idle_s: float = Field(default=60.0, gt=0, description="Seconds without input before the idle warning.")
    warn_s: float = Field(default=15.0, gt=0, description="Seconds the idle warning lasts before reset.")
    signage_s: float = Field(default=12.0, gt=0, description="Seconds each announcement stays on screen.")
    heartbeat_s: float = Field(default=10.0, gt=0, description="Seconds between page heartbeats.")
    lookup_timeout_s: float = Field(
        default=4.0, gt=0, le=4.5, description="Seconds to wait for a dossier lookup (message within 5 s)."
    )
    telemetry_s: float = Field(default=15.0, gt=0, description="Seconds between kiosk metric reports.")
    content_refresh_s: float = Field(
        default=30.0, gt=0, description="Seconds between reads of the fleet's desired config (content)."
    )
    content_keys: Path | None = Field(
        default=None,
        description="Extra JSON file {kid: base64 ed25519 public key} trusted for pushed content, "
        "on top of the fleet keys in DATA_DIR/trust.",
    )
    site_name_vi: str = Field(default="Toà nhà chung cư", description="Building name shown in the header.")
    site_name_en: str = Field(default="Apartment building", description="Building name in English.")

    @property
    def base_url(self) -> str:
        return f"http://{self.http_host}:{self.http_port}"

    @property
    def session_ttl_s(self) -> float:
        """Server-side limit: a session nobody touched for this long is wiped even if the page died."""
        return self.idle_s + self.warn_s + 5.0
