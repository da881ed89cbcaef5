"""pia-server: sync, E2EE device management and an AI proxy for the Pia desktop assistant."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pia-server")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
