"""The simulated tool server: tools over HTTP and MCP with controllable, reproducible latency.

``server.app.create_app(ServerConfig(...))`` builds the ASGI app; ``serve`` runs it in the
foreground and ``running_server`` on a background thread. ``server.core`` is the execution layer
both façades share (``server.routes`` for HTTP, ``server.mcp`` for MCP); latency models live in
``server.latency`` and ``server.profiles``, faults in ``server.faults``, sessions in
``server.sessions``, the tool registry in ``server.registry``. See docs/tool-server.md.
"""
