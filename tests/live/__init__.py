"""detection/live/: the live socket, its messages, and live updates across processes and faults."""
