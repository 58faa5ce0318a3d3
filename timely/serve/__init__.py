"""Serving a time-aware agent over HTTP: ``timely serve``.

Each request carries a time budget; the agent runs the one agent loop
(:func:`timely.loop.run_episode`) on a wall clock against a tool server and answers within it.
Two APIs sit on the same runs: the native ``/v1/runs`` (summary, or Server-Sent Events of the
loop's step events) and OpenAI-compatible ``/v1/chat/completions``. The dashboard
(:mod:`timely.serve.dashboard`) is served at ``/``. Start with :func:`timely.serve.app.create_app`.
"""
