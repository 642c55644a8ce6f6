"""The HTTP API (aiohttp): ``create_app(settings)``; ``scanner serve`` runs it."""

from scanner.api.app import create_app

__all__ = ["create_app"]
