"""detection/engine/: the Django-free engine: model loading, scoring, prompts, video, sources."""
