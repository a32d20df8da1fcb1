"""`ecgstream --help` and the sub-commands' examples, as a new user reads them."""

from __future__ import annotations

from ecgstream.cli import COMMANDS, build_parser
from ecgstream.evaluation.splits import MITDB_ALL


def test_the_top_level_help_lists_each_command_once():
    lines = [line.split() for line in build_parser().format_help().splitlines()]
    for name in COMMANDS:  # "  train  train a model..." or "  ecgstream train  train a model..."
        listed = [w for w in lines if w[:1] == [name] or w[:2] == ["ecgstream", name]]
        assert len(listed) == 1, (name, listed)


def test_the_synth_example_names_a_ds1_record():
    from ecgstream.cli.synth import HELP

    examples = [w for w in HELP.split() if "mitdb-ds1/" in w]
    assert examples and all(w.rsplit("/", 1)[1] in MITDB_ALL for w in examples)
