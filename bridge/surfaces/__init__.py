"""The client APIs the bridge translates to and from its native wire."""
