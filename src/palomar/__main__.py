"""Allow `python -m palomar`."""

from palomar.cli.main import main

main()
