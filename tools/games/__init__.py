"""Text games the tool server hosts, one per session: our treasure engine, TextWorld, Jericho.

:mod:`.common` is the session contract and the score line every observation ends with;
:mod:`.moves` holds the tools (one per move, plus the reference release's set); the engines are
:mod:`.treasure`, :mod:`.textworld_game` and :mod:`.jericho_game`.
"""
