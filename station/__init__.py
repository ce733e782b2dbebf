"""The collection station: serves the mini-program and ESP32 devices, and commands them."""

__version__ = "0.1.0"
