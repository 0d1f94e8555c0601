"""The reference server (REFERENCE §7): receives prepared files, applies them to a resource store.

``create_app`` builds the Starlette app (tests, embedding); ``serve`` runs it with uvicorn
(``prepsync serve``).
"""

from prepsync.server.app import create_app, serve

__all__ = ["create_app", "serve"]
