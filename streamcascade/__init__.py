"""streamcascade: a self-testing model cascade for streams of coding requests."""

__version__ = "0.1.0"
