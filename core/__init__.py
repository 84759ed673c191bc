"""Shared foundations of stillroom: settings, wire protocol, tables, store, metrics, errors.

Nothing in here imports another stillroom package.
"""
