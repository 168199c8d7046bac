"""The node: local scheduler, worker pool, object store directory, log forwarding."""
