metadata(
    version="1.0.0",
    description="cityedge I/O bus: COBS frames with CRC-16, requests, events and acknowledgements.",
    license="Apache-2.0",
)

package("iob")
