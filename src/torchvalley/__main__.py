"""``python -m torchvalley`` runs the command-line interface."""

from torchvalley.cli import main

raise SystemExit(main())
