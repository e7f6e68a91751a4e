"""`ssl-kd pretrain` as a script: `python pipelines/pretrain_ssl.py --help` (the command: `ssl_kd/commands/pretrain.py`)."""

from ssl_kd.commands.pretrain import main
from ssl_kd.errors import cli_main

if __name__ == "__main__":
    cli_main(main)
