"""Access to the process settings and back-office seam stored on the app."""

from __future__ import annotations

from flask import Flask, current_app

from config.settings import Settings

from .backend import Backend


def app_settings(app: Flask | None = None) -> Settings:
    settings: Settings = (app or current_app).extensions["settings"]
    return settings


def backend(app: Flask | None = None) -> Backend:
    b: Backend = (app or current_app).extensions["backend"]
    return b
