"""Start-up hook for processes veripo spawns (vLLM's model inspection and workers, servers, Ray workers).

`veripo.compat.install()` puts this folder on ``PYTHONPATH``, so Python runs this file at start-up in
child processes; it installs the same torchvision import hook as the parent. It imports no torch.
"""

import os as _os
import sys as _sys

try:
    try:
        from veripo import compat as _veripo_compat
    except ImportError:  # veripo run from a source tree that is not installed: use that tree
        _sys.path.append(_os.path.dirname(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))))
        from veripo import compat as _veripo_compat

    _veripo_compat.install()
except ImportError:  # veripo not importable in this interpreter: nothing to do
    pass
