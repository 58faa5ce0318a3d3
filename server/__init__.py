"""The simulated tool server: tools over HTTP and MCP with controllable, reproducible latency.

``timely_server.app.create_app(ServerConfig(...))`` builds the ASGI app; ``serve`` runs it in the
foreground and ``running_server`` on a background thread. ``timely_server.core`` is the execution
layer both façades share (``timely_server.routes`` for HTTP, ``timely_server.mcp`` for MCP); latency
models live in ``timely_server.latency`` and ``timely_server.profiles``, faults in
``timely_server.faults``, sessions in ``timely_server.sessions``, the tool registry in
``timely_server.registry``. See docs/tool-server.md.
"""
