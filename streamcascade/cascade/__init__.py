"""Levels and the cascade engine."""

from streamcascade.cascade.engine import CascadeEngine
from streamcascade.cascade.level import Level, LevelOutcome

__all__ = ["CascadeEngine", "Level", "LevelOutcome"]
