"""Seeing what the bridge does: the access log and request metrics stage, Prometheus
metrics fed by events, and the log formatting."""
