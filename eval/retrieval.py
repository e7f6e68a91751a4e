"""`ssl-kd retrieval` as a script: `python eval/retrieval.py --help` (the command: `ssl_kd/commands/retrieval.py`)."""

from ssl_kd.commands.retrieval import main
from ssl_kd.errors import cli_main

if __name__ == "__main__":
    cli_main(main)
