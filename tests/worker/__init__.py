"""detection/worker/: run_detector's loop, leases, recording, database faults, webhooks."""
