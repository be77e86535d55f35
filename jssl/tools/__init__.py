"""Command-line tools that read a trained workdir: `python -m jssl.tools.<name>`."""
