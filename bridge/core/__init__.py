"""What every feature builds on: settings, the exchange and its pipeline, errors, stream
framing, the upstream client and its transport, events, the instance's run directory, the
reasoning rule, log redaction and what each process makes for itself after fork
(`forking`). Nothing in `core` imports a feature package."""
