"""Enterprise shared mode: clients present the bridge's own client keys, the bridge
applies the one upstream key; the key store and its `keys` command."""
