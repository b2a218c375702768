"""cityedge: software for the edge devices of a city's e-government and smart-city programme."""

__version__ = "0.1.0"
