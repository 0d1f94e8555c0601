"""``python -m prepsync`` is the ``prepsync`` command."""

from prepsync.cli import main

if __name__ == "__main__":
    main()
