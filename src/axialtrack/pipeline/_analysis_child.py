"""The analysis child under its former name: ``python -m
axialtrack.pipeline._analysis_child ADDRESS`` runs
:mod:`axialtrack.live._analysis_child`."""

import sys

from axialtrack.live._analysis_child import main

if __name__ == "__main__":
    sys.exit(main())
