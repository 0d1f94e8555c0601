"""The reference server (REFERENCE §7): receives prepared files, applies them to a resource store.

``create_app`` builds the Starlette app (tests, embedding); ``serve`` runs it with uvicorn
(``prepsync serve``). Both are loaded on first use: the command line reads
:mod:`prepsync.server.defaults` for ``serve --help`` without loading Starlette and uvicorn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prepsync.server.app import create_app, serve

__all__ = ["create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from prepsync.server import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
