"""python -m training train|eval: see --help."""

from training.cli import main

raise SystemExit(main())
