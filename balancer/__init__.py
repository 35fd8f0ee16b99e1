"""balancer: a reverse-proxy HTTP load balancer."""

__version__ = "0.1.0"
