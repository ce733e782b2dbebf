"""Talking to ESP32 devices over their own HTTP API, and simulating them. Never imports Qt."""
