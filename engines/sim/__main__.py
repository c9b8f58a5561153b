"""``python -P -m fairlane.engines.sim``: run the engine simulator."""

from .main import main

raise SystemExit(main())
