"""`python -m drip.cli`: the same as the `drip` command."""

from drip.cli import main

main()
