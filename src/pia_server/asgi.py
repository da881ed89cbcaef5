"""ASGI entry point for process managers: ``granian --interface asgi pia_server.asgi:app``.

Settings come from ``PIA_CONFIG`` and the ``PIA_*`` environment. Run ``pia-server migrate``
first (``pia-server serve`` does it itself).
"""

from pia_server.app import create_app
from pia_server.core.config import load_settings
from pia_server.core.heap import freeze_startup_objects
from pia_server.core.logging import configure_logging

_settings = load_settings()
configure_logging(_settings.server.log_level, _settings.server.log_format)
app = create_app(_settings)
freeze_startup_objects()
