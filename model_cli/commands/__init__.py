"""The CLI's commands, one module per concern; each exposes `register(app)`."""
