"""`ssl-kd knn` as a script: `python eval/knn.py --help` (the command: `ssl_kd/commands/knn.py`)."""

from ssl_kd.commands.knn import main
from ssl_kd.errors import cli_main

if __name__ == "__main__":
    cli_main(main)
