"""The kiosk display: session states in Chinese and English on a local page (DESIGN §1).

`state` (what the kiosk shows), `messages` (the words), `dispatcher` (one fan-out to every
outward channel) and `server` (the page and its live stream on 127.0.0.1, aiohttp). The server
is imported from `edge.kiosk.display.server` on its own, so a kiosk with the display off never
loads aiohttp.
"""

from edge.kiosk.display.dispatcher import Dispatcher, Listener
from edge.kiosk.display.messages import render
from edge.kiosk.display.state import DENIAL_REASONS, STATES, KioskState

__all__ = ["DENIAL_REASONS", "STATES", "Dispatcher", "KioskState", "Listener", "render"]
