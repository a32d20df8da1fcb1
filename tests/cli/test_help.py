"""`ecgstream --help` and the sub-commands' examples, as a new user reads them."""

from __future__ import annotations

from ecgstream.cli import COMMANDS, build_parser
from ecgstream.evaluation.splits import MITDB_ALL


def test_the_top_level_help_lists_each_command_once():
    text = build_parser().format_help()
    for name in COMMANDS:
        assert sum(line.split()[:1] == [name] for line in text.splitlines()) == 1, name


def test_the_synth_example_names_a_ds1_record():
    from ecgstream.cli.synth import HELP

    examples = [w for w in HELP.split() if "mitdb-ds1/" in w]
    assert examples and all(w.rsplit("/", 1)[1] in MITDB_ALL for w in examples)
