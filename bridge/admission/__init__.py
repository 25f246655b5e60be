"""GPU-slot admission: an instance-wide cap on upstream calls in flight, with a bounded
queue in front of it."""
