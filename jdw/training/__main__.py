"""``python -m jdw.training``: the training command line (:mod:`jdw.training.cli`)."""

from jdw.training import cli

if __name__ == "__main__":
    cli.run()
