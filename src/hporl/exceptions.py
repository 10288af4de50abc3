"""Errors a user can cause. Every one is an :class:`HporlError`; the CLI prints it on one line."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "HporlError",
    "ModelError",
    "PolicyError",
    "SearchSpaceError",
    "StoreError",
    "TaskError",
]


class HporlError(Exception):
    """Base class of every error caused by user input (a file, a key, a value, an argument)."""


class SearchSpaceError(HporlError, ValueError):
    """A search space definition or a configuration does not fit its space."""


class TaskError(HporlError, ValueError):
    """Task data or models cannot make a valid task (shapes, missing values, classes, ...)."""


class ConfigError(HporlError, ValueError):
    """A configuration file or argument is malformed (YAML, types, unknown names)."""


class PolicyError(HporlError, ValueError):
    """A saved policy is missing, edited, or does not fit the space or task it is used with."""


class ModelError(HporlError, ValueError):
    """A saved model is missing, edited, cannot be rebuilt, or is used in a way it does not allow."""


class StoreError(HporlError, RuntimeError):
    """The trial store cannot be opened, read or written (URL, server, file, permissions)."""
