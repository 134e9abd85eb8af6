"""detection/ itself: its models, admin, API, management commands and system checks."""
