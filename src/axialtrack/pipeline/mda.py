"""The module :mod:`axialtrack.live.mda` under its former name.

The live machinery moved from :mod:`axialtrack.pipeline` to
:mod:`axialtrack.live`; importing this name gives that module itself, so code
(and tests that patch its attributes) written against the old path keeps
working.
"""

import sys

from axialtrack.live import mda as _moved
from axialtrack.live.mda import *  # noqa: F403

sys.modules[__name__] = _moved
