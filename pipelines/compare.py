"""`ssl-kd compare` as a script: `python pipelines/compare.py --help` (the command: `ssl_kd/commands/compare.py`)."""

from ssl_kd.commands.compare import main
from ssl_kd.errors import cli_main

if __name__ == "__main__":
    cli_main(main)
