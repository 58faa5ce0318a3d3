"""High-frequency tool calls: text games, one tool call per move, scored by game points.

Importing this package registers ``games/treasure-v1`` (our own engine, no dependencies),
``games/textworld-v1`` (TextWorld-generated games, with the ``games`` extra) and
``games/jericho-v1`` (game files you supply, with ``jericho``), and their unversioned aliases. The
games run on the tool server (:mod:`timely_tools.games`); these classes build instances, start them
in the episode's session and score trajectories.
"""

from timely_eval.tasks.games.base import GameTask
from timely_eval.tasks.games.jericho_games import JerichoTask
from timely_eval.tasks.games.textworld_games import TextWorldTask
from timely_eval.tasks.games.treasure import TreasureTask

__all__ = ["GameTask", "JerichoTask", "TextWorldTask", "TreasureTask"]
