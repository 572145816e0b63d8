"""``python -m membership`` is ``membershipd``."""

from .cli import main

main()
