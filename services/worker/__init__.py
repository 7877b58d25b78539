"""The worker service: one llama.cpp llama-server process per loaded model, behind the Worker gRPC API."""
