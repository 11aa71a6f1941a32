"""octrain's Hydra launchers (a package under ``hydra_plugins``, where Hydra looks for plugins)."""
