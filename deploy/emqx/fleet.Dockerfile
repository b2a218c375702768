# The fleet worker image: `cityedge fleet serve`, configured by CITYEDGE_FLEET_* variables.
# Build from the repository root: docker build -f deploy/emqx/fleet.Dockerfile -t cityedge-fleet .
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cityedge cityedge
COPY protocol protocol
COPY agent agent
COPY fleet fleet
COPY hw hw
COPY kiosk_ui kiosk_ui
COPY models models
COPY provisioning provisioning
COPY hil hil
RUN pip install --no-cache-dir ".[fleet]" \
    && useradd --uid 10001 --create-home fleet \
    && mkdir -p /home/fleet/data && chown fleet:fleet /home/fleet/data
USER fleet
WORKDIR /home/fleet
EXPOSE 8443
ENTRYPOINT ["cityedge", "fleet", "serve"]
