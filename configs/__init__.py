"""The shipped configurations, installed as ``medres.configs`` (see setup.py); found by name with
``medres.config.resolve_config_path``."""
