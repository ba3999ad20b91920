"""Configuration shared by every process: one pydantic-settings model."""

from config.settings import ConfigError, Settings, get_settings, load_settings

__all__ = ["ConfigError", "Settings", "get_settings", "load_settings"]
