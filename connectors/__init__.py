"""Sources and sinks around the streamcascade library (which never imports this package)."""
