"""``python -m dgsct_cli`` (also what ``torchrun -m dgsct_cli`` runs)."""

from .cli.app import main

# Guarded: worker processes started with "spawn" import this module again.
if __name__ == "__main__":
    main()
