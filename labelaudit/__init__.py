"""labelaudit: serve an image classifier in real time and audit the noisy labels that stream in with it."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("labelaudit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
