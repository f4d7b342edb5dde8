"""``python -m fastvae`` (and ``torchrun -m fastvae``) runs the ``fastvae`` command."""

from .cli import main

raise SystemExit(main())
