"""The registry service: the OCI model store under MODELS_PATH, packaging and blob serving."""
