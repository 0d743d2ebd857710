"""``python -m selma3d`` is the ``selma3d`` command."""

from .cli import app

if __name__ == "__main__":
    app()
