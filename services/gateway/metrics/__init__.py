"""The gateway's Prometheus `/metrics` page: its own series (families.py, recorded by
middleware.py and meter.py), the scheduler's view of the fleet (fleet.py), and every runner's
llama-server metrics, labelled (collect.py, aggregate.py)."""
