"""`python -m saeforge` (and `torchrun -m saeforge`) behave like the `saeforge` command."""

from saeforge.cli import main

if __name__ == "__main__":
    main()
