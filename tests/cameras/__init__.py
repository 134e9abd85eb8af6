"""cameras/: who sees which camera (the access rule, in the pages and the admin), ensure_admin."""
