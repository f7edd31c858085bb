"""Run the scheduler: the same as `drip worker`."""

from drip.cli import main

if __name__ == "__main__":
    import sys

    sys.argv[1:1] = ["worker"]
    main()
