"""The station's core: store, service, liveness and the HTTP faces. Never imports Qt."""
