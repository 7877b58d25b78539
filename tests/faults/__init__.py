"""Fault injection under load: a real multi-worker stack, a streaming load generator, and the
faults (kill -9 of a worker, a llama-server, the scheduler, the registry mid-pull; SIGTERM of
the gateway), shared by tests/integration/test_fault_injection.py and bench/fault_injection.py."""
