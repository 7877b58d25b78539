"""The HTTP front door: DMR REST and OpenAI routes turned into gRPC calls to the control plane and workers."""
