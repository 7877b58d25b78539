"""Model Runner services: registry, scheduler, worker, gateway, and the local stack launcher."""
