"""The Ollama API on top of the inference path (being written)."""
