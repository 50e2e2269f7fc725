"""``python -m aggregator`` runs the same command as the ``aggregator`` script."""

from .cli import main

main()
