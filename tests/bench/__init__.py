"""bench/: the benchmark (make bench, manage.py bench)."""
