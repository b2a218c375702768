metadata(
    version="1.0.0",
    description="cityedge cabinet I/O board: host watchdog, tamper, SHT3x, fan, battery, signal input.",
    license="Apache-2.0",
)

require("iob")
package("cabinet")
