"""`python -m sandbox` runs the command line."""

from sandbox.cli.main import main

main()
