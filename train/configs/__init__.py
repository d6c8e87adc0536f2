"""Experiments, one file each (``PRESETS``, ``get_config(preset)``, ``build(config)``): ``toy2d``."""
