"""``python -m aggregator`` runs the same command as the ``aggregator`` script."""

from .launch import main

main()
