"""`ssl-kd distill` as a script: `python pipelines/distill_ssl.py --help` (the command: `ssl_kd/commands/distill.py`)."""

from ssl_kd.commands.distill import main
from ssl_kd.errors import cli_main

if __name__ == "__main__":
    cli_main(main)
