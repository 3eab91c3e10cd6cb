"""The bottom layer: every seam into diffusers, written once.

It imports only the standard library, torch and diffusers, never another fastsample subpackage, so every
capability can build on it (docs/design/architecture.md). Its modules are imported directly
(``fastsample.integration.adapters``, ``fastsample.integration.call_scope``); this package imports nothing.
"""
