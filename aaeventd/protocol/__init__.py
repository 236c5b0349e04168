"""The sans-I/O wire protocol: framing, parsing, validation, encoding.

Nothing in this package imports asyncio, socket or websockets.
"""
