"""The video-dashboard service: cameras polled with motion gating, clips analysed by a
vision model (or, with none, by a classic people detector), events in SQLite, a JSON API and
a dashboard, all in one standalone process. Run it as ``python -m service --config FILE``
from the folder that holds this package (see ``config.py`` for the file's keys).

It imports nothing from supervisor: the recipe uploads this folder to a host as it is.
"""

__version__ = "0.1.0"
