"""The benchmark (`make bench`, `manage.py bench`): outside the apps, it drives them."""
