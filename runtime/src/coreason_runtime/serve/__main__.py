"""``python -m coreason_runtime.serve``: run the server without the ``coreason`` CLI."""

from __future__ import annotations

from coreason_runtime.serve._cli import main

raise SystemExit(main())
