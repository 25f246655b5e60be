"""Rate limiting: the instance-wide token bucket in front of the upstream (`-r`)."""
