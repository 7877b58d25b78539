"""DMR's own REST routes: model management and the /engines endpoints."""
