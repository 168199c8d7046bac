"""The worker process: one event loop; sync user code off it, async user code on it."""
