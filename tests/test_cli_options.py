"""The command line is one tool: shared option groups, the same flags everywhere, documented."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from avsentry import __version__
from avsentry.cli import build_parser, transform_list

# group title -> the commands that carry it, and its flags
SHARED = {
    "model": (("check", "serve", "bench core"), ["--model", "--backend", "--device"]),
    "detector": (
        ("check", "stream", "mic", "camera", "serve"),
        [
            "--transforms",
            "--n",
            "--sigma",
            "--representation",
            "--no-smoothing",
            "--threshold",
            "--hop-ms",
        ],
    ),
    "output": (("check", "stream", "mic", "camera"), ["--json", "--fail-on-flag", "--quiet"]),
    "connection": (
        ("stream", "mic", "camera", "models"),
        ["--server", "--ca", "--cert", "--key", "--token-file"],
    ),
}


def commands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command's parser by its name, e.g. ``"bench core"``."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[prefix + name] = sub
                out.update(commands(sub, prefix + name + " "))
    return out


def group(parser: argparse.ArgumentParser, title: str) -> list[argparse.Action]:
    (g,) = [g for g in parser._action_groups if g.title == title]
    return list(g._group_actions)


def signature(action: argparse.Action) -> tuple:
    """What a user sees of a flag: names, type, choices, default, arity, help."""
    return (
        tuple(action.option_strings),
        action.type,
        action.choices,
        action.default,
        action.nargs,
        action.const,
        action.help,
    )


@pytest.mark.parametrize("title", sorted(SHARED))
def test_shared_groups_have_identical_flags_across_commands(title) -> None:
    users, flags = SHARED[title]
    cmds = commands(build_parser())
    seen = {}
    for cmd in users:
        actions = group(cmds[cmd], title)
        assert [a.option_strings[0] for a in actions] == flags, cmd
        seen[cmd] = [signature(a) for a in actions]
    first = seen[users[0]]
    assert all(sigs == first for sigs in seen.values())


def test_flags_shared_outside_the_groups_mean_the_same() -> None:
    """A flag name used by several commands has one type (e.g. --noise-seed of check and serve)."""
    cmds = commands(build_parser())
    types: dict[str, set] = {}
    for cmd in ("check", "serve", "stream", "mic", "camera", "models", "calibrate"):
        for a in cmds[cmd]._actions:
            for opt in a.option_strings:
                types.setdefault(opt, set()).add(a.type if a.type is not None else a.__class__)
    assert all(len(t) == 1 for opt, t in types.items()), {k: v for k, v in types.items() if len(v) > 1}


@pytest.mark.parametrize("cmd", ["check", "serve", "stream", "mic", "camera", "models"])
def test_every_option_states_its_default(cmd) -> None:
    parser = commands(build_parser())[cmd]
    for a in parser._actions:
        if a.option_strings and a.dest not in ("help", "list_devices"):
            assert "default" in (a.help or ""), (cmd, a.option_strings)


def test_version() -> None:
    r = subprocess.run([sys.executable, "-m", "avsentry", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == f"avsentry {__version__}\n"


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "from avsentry.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'grpc', 'numpy', 'av', 'tqdm') if m in sys.modules]\n"
        "print('heavy:', heavy, file=sys.stderr)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "usage: avsentry" in r.stdout
    assert r.stderr.strip() == "heavy: []"


@pytest.mark.parametrize(
    "cmd",
    [
        [],
        ["check"],
        ["serve"],
        ["stream"],
        ["mic"],
        ["camera"],
        ["models"],
        ["train"],
        ["calibrate"],
        ["bench", "core"],
        ["demo"],
    ],
)
def test_help_texts(cmd) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "avsentry", *cmd, "--help"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and "usage: avsentry" in r.stdout


@pytest.mark.parametrize(
    ("text", "specs"),
    [
        ("none", ()),
        ("", ()),
        ("mp3", ("mp3",)),
        ("mp3, opus:bitrate_kbps=12 ,noise", ("mp3", "opus:bitrate_kbps=12", "noise")),
        ("mp3:bitrate_kbps=32,segments=2,aac", ("mp3:bitrate_kbps=32,segments=2", "aac")),
    ],
)
def test_transform_lists_keep_multi_parameter_specs_whole(text, specs) -> None:
    assert transform_list(text) == specs


@pytest.mark.parametrize(
    "argv",
    [
        ["check", "f.wav", "--n", "0"],
        ["stream", "f.wav", "--sigma", "-1"],
        ["mic", "--threshold", "nan"],
        ["serve", "--hop-ms", "0.5"],
        ["serve", "--noise-seed", "-2"],
        ["check", "f.wav", "--representation", "mfcc"],
    ],
)
def test_out_of_range_values_are_usage_errors(argv, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    assert "error:" in capsys.readouterr().err
