"""Local clinical workstation: a web page and REST API around one trained model.

Start it with ``lungct serve RUN_DIR`` or :func:`serve`; embed it with :func:`create_app`.
Research use only — not a diagnosis.
"""

from lungct.serve.app import create_app, serve

__all__ = ["create_app", "serve"]
