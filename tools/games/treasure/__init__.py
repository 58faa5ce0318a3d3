"""Our own text game: a generated house of rooms, locks, keys and a treasure quest.

It needs nothing outside this project, so the games family never depends on one library:
:mod:`.world` generates worlds, :mod:`.engine` plays them, :mod:`.solver` writes walkthroughs.
"""
