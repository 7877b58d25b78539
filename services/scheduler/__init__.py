"""The scheduler: worker membership, placement, single-flight loads, request leases, idle unload.

It is the control plane only: the gateway asks it for a worker (`Assign`) and then streams from
that worker directly; the worker tells it when the request ends (`Release`).
"""
