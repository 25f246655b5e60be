"""Async requests: `request_fingerprint`, 202 Accepted, durable jobs run in the background."""
