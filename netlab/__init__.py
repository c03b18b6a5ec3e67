"""netlab: the Kubernetes network data plane, emulated with real Linux namespaces."""

__version__ = "0.1.0"
