"""Routing across upstreams (`--upstreams FILE`): by model, balanced, with fail-over."""
