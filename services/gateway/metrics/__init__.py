"""DMR's aggregated Prometheus `/metrics`: every runner's llama-server metrics, labelled."""
