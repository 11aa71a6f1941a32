"""The module Hydra's plugin scan imports: octrain's launchers, when the submitit plugin is installed.

Hydra imports every module under ``hydra_plugins`` at each start and takes launchers only from
there. Without the cluster extra (``pip install -e '.[cluster]'``) this module defines nothing,
and ``hydra/launcher=local_gpus`` fails to compose with Hydra's own message about the missing
``submitit_local``.
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None:
    from hydra_plugins.octrain_launchers._submitit import LocalGpuLauncher, SlurmLauncher

    __all__ = ["LocalGpuLauncher", "SlurmLauncher"]
