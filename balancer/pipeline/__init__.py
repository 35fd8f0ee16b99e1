"""The stages of the request path, each a module of plain functions over the Runtime a
request read once (proxy.py runs them in order)."""
