"""``python -P -m fairlane.engines.sim``: run the engine simulator."""

from .server import main

raise SystemExit(main())
