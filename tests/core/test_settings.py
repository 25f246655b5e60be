"""The settings list: every flag's bad value stops the bridge with exit status 2 and one
line naming the flag, from the command line and from the environment alike; `-h`, `-V`,
and the README's option table come from the same list."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bridge import __version__
from bridge.core.settings import (
    PROG,
    SETTINGS,
    Fraction,
    HostPort,
    Integer,
    Pattern,
    SecretFile,
    SecretText,
    Setting,
    Switch,
    Text,
    Url,
    load_or_exit,
    markdown_table,
)
from bridge.serve import cli

ROOT = Path(__file__).resolve().parents[2]


def bad_values(setting: Setting) -> list[str]:
    """Values that must be refused, derived from the setting's parser."""
    parse = setting.parse
    if isinstance(parse, Integer):
        return [str(parse.low - 1), str(parse.high + 1), "abc", "1.5"]
    if isinstance(parse, Url):
        return ["ftp://example.com", "localhost:11434", "http://bad host", "http://h:99999"]
    if isinstance(parse, Fraction):
        return ["1.5", "-0.1", "nan", "high"]
    if isinstance(parse, HostPort):
        return ["localhost", "127.0.0.1:70000", "bad host:80", ":3000", "127.0.0.1:port"]
    if isinstance(parse, Switch):
        return ["maybe"]
    if isinstance(parse, Pattern):
        return ["(unclosed", "[z-a]"]
    if isinstance(parse, SecretText):
        return ["two words", ""]
    if isinstance(parse, SecretFile):
        return ["/nonexistent/key-file"]
    if isinstance(parse, Text):
        return [""] if parse.required else []
    options = getattr(parse, "options", None)
    if options:
        return ["-".join(options) + "-not-an-option"]
    return []


CASES = [pytest.param(setting, value, id=f"{setting.label}={value}")
         for setting in SETTINGS for value in bad_values(setting)]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bridge", *args], cwd=ROOT, timeout=30,
                          capture_output=True, text=True)


def test_every_setting_with_a_checkable_parser_has_bad_values():
    unchecked = [s.label for s in SETTINGS
                 if not bad_values(s) and not (isinstance(s.parse, Text) and not
                                               s.parse.required)]
    assert not unchecked, f"give these parsers bad values in bad_values(): {unchecked}"


FLAG_CASES = [case for case in CASES if not isinstance(case.values[0].parse, Switch)]


def assert_one_line_naming(setting: Setting, value: str, status: int | str | None, out: str,
                           err: str) -> None:
    assert status == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert setting.label in lines[0]
    assert ("(hidden)" if setting.is_secret else repr(value)) in lines[0]
    assert setting.allowed in lines[0]
    assert out == ""


@pytest.mark.parametrize("setting, value", FLAG_CASES)
def test_bad_flag_value_exits_2_with_one_line_naming_the_flag(setting, value, capsys):
    """What `deepseek-ollama-bridge FLAG=VALUE` runs (`cli.main`), in this process: the
    command itself is run below, once per kind of parser."""
    with pytest.raises(SystemExit) as stopped:
        cli.main([f"{setting.label}={value}"])
    captured = capsys.readouterr()
    assert_one_line_naming(setting, value, stopped.value.code, captured.out, captured.err)


def test_the_command_exits_2_with_one_line_for_a_bad_value_of_each_kind_of_flag():
    kinds: dict[type, tuple[Setting, str]] = {}
    for case in FLAG_CASES:
        kinds.setdefault(type(case.values[0].parse), case.values)
    for setting, value in kinds.values():
        result = run_cli(f"{setting.label}={value}")
        assert_one_line_naming(setting, value, result.returncode, result.stdout, result.stderr)


@pytest.mark.parametrize("setting, value", CASES)
def test_bad_environment_value_exits_2_with_one_line_naming_variable_and_flag(setting, value,
                                                                              capsys):
    with pytest.raises(SystemExit) as stopped:
        load_or_exit([], environ={setting.env: value})
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert setting.env in lines[0] and setting.label in lines[0]
    assert setting.allowed in lines[0]  # what is allowed is named


@pytest.mark.parametrize("name", ["OTEL_EXPORTER_OTLP_ENDPOINT",
                                  "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"])
def test_a_bad_standard_otlp_endpoint_variable_is_one_line_and_exit_2(name, capsys):
    with pytest.raises(SystemExit) as stopped:
        load_or_exit([], environ={name: "collector:4318"})
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"{PROG}: error: {name}: invalid value 'collector:4318': not a URL (allowed: "
        "http(s)://host[:port][/path])"]
    assert load_or_exit([], environ={name: "http://collector:4318"})  # a good one starts


def test_min_interval_above_max_interval_is_refused():
    result = run_cli("-i", "2000", "-m", "1000")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "--retry-min-interval" in result.stderr


def test_unknown_flag_is_one_line_and_exit_2():
    result = run_cli("--no-such-flag")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1


def test_help_shows_every_flag_with_its_default_and_range():
    result = run_cli("-h")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for setting in SETTINGS:
        for flag in setting.flags:
            assert flag in text
        assert setting.env in text
        if setting.shown_default() and not setting.is_switch:
            assert f"default {setting.shown_default()}" in text
        if setting.allowed and not setting.is_switch:
            assert " ".join(f"allowed {setting.allowed}".split()) in text


def test_version():
    result = run_cli("-V")
    assert result.returncode == 0 and result.stdout.strip() == f"{PROG} {__version__}"


def test_command_line_overrides_environment_which_overrides_defaults():
    settings = load_or_exit(["-t", "2000"], environ={"BRIDGE_TIMEOUT": "3000",
                                                     "BRIDGE_RETRY_ATTEMPTS": "4"})
    assert settings.timeout == 2000 and settings.retry_attempts == 4
    assert settings.listen == ("127.0.0.1", 3000)
    assert load_or_exit(["-l", "[::1]:8080"], environ={}).listen == ("::1", 8080)


def test_readme_has_exactly_the_generated_option_table():
    readme = (ROOT / "README.md").read_text()
    table = markdown_table()
    assert table in readme, ("README.md's option table is out of date: regenerate it with "
                             "`python -m bridge.core.settings`")
    first, last = table.splitlines()[0], table.splitlines()[-1]
    lines = readme.splitlines()
    start = lines.index(first)
    end = start + len(table.splitlines())
    assert lines[end - 1] == last and (end == len(lines) or not lines[end].startswith("|"))
