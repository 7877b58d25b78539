"""Code shared by every service: settings parsing, gRPC bootstrap, model references, digests."""
