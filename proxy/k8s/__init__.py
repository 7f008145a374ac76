"""Kubernetes: the sidecar injector (a mutating admission webhook). Nothing here is on the proxy's path."""
