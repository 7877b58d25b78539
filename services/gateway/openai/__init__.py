"""OpenAI-compatible routes: inference (passed through to llama-server unchanged) and model lists."""
