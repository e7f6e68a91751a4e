"""`ssl-kd report` as a script: `python eval/report.py --help` (the command: `ssl_kd/commands/report.py`)."""

from ssl_kd.commands.report import main
from ssl_kd.errors import cli_main

if __name__ == "__main__":
    cli_main(main)
