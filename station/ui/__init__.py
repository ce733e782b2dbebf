"""The desktop window (Qt). Reaches the core only through its service and events."""
