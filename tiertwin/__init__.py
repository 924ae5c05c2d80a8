"""tiertwin: a local / edge / cloud digital twin for 6G mobile-metaverse networks."""

from tiertwin.errors import TiertwinError

__version__ = "0.1.0"
__all__ = ["TiertwinError", "__version__"]
