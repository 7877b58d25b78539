"""model-cli: DMR's command line, talking to the gateway over HTTP."""
