"""``python -m dgsct_cli`` (also what ``torchrun -m dgsct_cli`` runs)."""

from .cli.app import main

main()
