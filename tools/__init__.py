"""Tool implementations the simulated tool server exposes.

A tool is an async handler ``(arguments, ctx) -> result`` plus its JSON Schema, wrapped in a
:class:`timely_tools.base.ToolDef` by the :func:`timely_tools.base.tool` decorator. Modules here
hold implementations only and import nothing from ``server``: the server owns HTTP, latency
injection and argument validation, so a handler receives arguments that already match its schema and
raises :class:`timely_tools.base.ToolInputError` for input the schema cannot rule out (division by
zero, an unknown word).
"""
