"""`python -m pipelines` is the same as the `pipelines` console script."""
from pipelines.cli import main

raise SystemExit(main())
