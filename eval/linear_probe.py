"""`ssl-kd probe` as a script: `python eval/linear_probe.py --help` (the command: `ssl_kd/commands/probe.py`)."""

from ssl_kd.commands.probe import main
from ssl_kd.errors import cli_main

if __name__ == "__main__":
    cli_main(main)
