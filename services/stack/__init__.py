"""The local stack: registry, scheduler, one worker and the gateway as processes on this machine."""
