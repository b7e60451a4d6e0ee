from __future__ import annotations

from pathlib import Path

import pytest

from procmond import config as config_module
from procmond.config import Config, check_listen_resolves, load_config, parse_config, split_listen
from procmond.errors import ConfigError

SHIPPED = Path(__file__).parents[2] / "config" / "procmond.yaml"


def test_shipped_config_is_exactly_the_embedded_defaults() -> None:
    assert parse_config(SHIPPED.read_text(), str(SHIPPED)) == Config()


def test_every_key_is_documented_in_the_shipped_config() -> None:
    text = SHIPPED.read_text()
    for key in Config.__dataclass_fields__:
        assert f"\n{key}:" in text


def test_empty_file_means_defaults() -> None:
    assert parse_config("") == Config()
    assert parse_config("# only a comment\n") == Config()


def test_no_file_anywhere_means_embedded_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", tmp_path / "absent.yaml")
    assert load_config(None) == (Config(), "embedded defaults")


def test_default_path_is_used_when_present(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("max_entries: 7\n")
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", path)
    assert load_config(None) == (Config(max_entries=7), str(path))


def test_values_are_normalised() -> None:
    c = parse_config("labels: [parent_comm, comm]\nlog_level: DEBUG\nlisten: '[::1]:9'\n")
    assert c.labels == ("comm", "parent_comm")
    assert c.log_level == "debug"
    assert (c.listen_host, c.listen_port) == ("::1", 9)


def test_every_problem_is_reported_with_its_line() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("max_entries: 0\nhistograms: yes please\nbogus: 1\n", "f.yaml")
    problems = caught.value.problems
    assert problems[0].startswith("f.yaml: line 1: max_entries: must be from 1 to")
    assert problems[1].startswith("f.yaml: line 2: histograms: must be true or false")
    assert problems[2].startswith("f.yaml: line 3: bogus: unknown key")
    assert caught.value.exit_code == 78


@pytest.mark.parametrize("value", ["true", "1.5", "'7'", "-1", "2000000"])
def test_max_entries_must_be_a_sane_whole_number(value: str) -> None:
    with pytest.raises(ConfigError, match="max_entries"):
        parse_config(f"max_entries: {value}\n")


@pytest.mark.parametrize("labels", ["comm", "[comm, comm]", "[pid]", "[1]"])
def test_bad_labels(labels: str) -> None:
    with pytest.raises(ConfigError, match="labels"):
        parse_config(f"labels: {labels}\n")


def test_labels_may_be_empty() -> None:
    assert parse_config("labels: []\n").labels == ()


def test_yaml_syntax_error_names_the_line() -> None:
    with pytest.raises(ConfigError, match=r"x.yaml: line 2: YAML syntax error: mapping values"):
        parse_config("max_entries: 1\nlabels: a: b\n", "x.yaml")


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        (":10057", ("", 10057)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
        ("[::]:80", ("::", 80)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_listen_forms(listen: str, expected: tuple[str, int]) -> None:
    assert split_listen(listen) == expected


@pytest.mark.parametrize(
    "listen",
    [
        *("10057", ":0", ":65536", "::1:80", "[zz]:80", "a b:80", "host:", ":http", "a..b:80"),
        f"{'a' * 64}.example:80",  # a label longer than 63 characters
    ],
)
def test_bad_listen(listen: str) -> None:
    with pytest.raises(ValueError):
        split_listen(listen)


def test_every_field_has_a_validator() -> None:
    assert set(config_module._VALIDATORS) == set(Config.__dataclass_fields__)


def test_a_near_miss_key_gets_a_suggestion() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("max_entires: 10\nlog_lvl: debug\nzzz: 1\n", "f.yaml")
    assert caught.value.problems[:2] == [
        "f.yaml: line 1: max_entires: unknown key; did you mean max_entries?",
        "f.yaml: line 2: log_lvl: unknown key; did you mean log_level?",
    ]
    assert caught.value.problems[2].startswith("f.yaml: line 3: zzz: unknown key (known keys: ")


def test_command_line_overrides_win_and_are_validated_alike(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("listen: ':1'\nlog_level: info\nmax_entries: 7\n")
    config, source = load_config(path, {"listen": "[::1]:9", "log_level": "DEBUG"})
    assert config == Config(listen="[::1]:9", log_level="debug", max_entries=7)
    assert source == f"{path} (--listen, --log-level from the command line)"
    assert load_config(path, {}) == (Config(listen=":1", max_entries=7), str(path))
    with pytest.raises(ConfigError) as caught:
        load_config(path, {"listen": "::1:9", "log_level": "loud"})
    assert caught.value.problems == [
        'command line: --listen: an IPv6 address needs brackets, as in "[::1]:9"',
        "command line: --log-level: must be one of debug, info, warning, error, got 'loud'",
    ]


def test_check_config_resolves_the_listen_host() -> None:
    check_listen_resolves(Config(listen=":10057"), "f.yaml")  # all interfaces: nothing to do
    check_listen_resolves(Config(listen="127.0.0.1:10057"), "f.yaml")
    with pytest.raises(ConfigError, match=r"^f.yaml: listen: host no-such-host.invalid does not"):
        check_listen_resolves(Config(listen="no-such-host.invalid:10057"), "f.yaml")


def test_a_reload_keeps_the_settings_that_shape_the_kernel_maps() -> None:
    """procmond/kernel/pins.py's rule for a reload: what shapes the maps (and the pins) waits
    for the next start; every other setting applies at once."""
    from procmond.kernel.pins import KERNEL_SETTINGS, kernel_settings_kept

    running = Config()
    new = Config(max_entries=8, labels=("comm",), storm_threshold=500, log_level="debug")
    kept, changed = kernel_settings_kept(running, new)
    assert changed == ["max_entries", "labels"]
    assert (kept.max_entries, kept.labels) == (running.max_entries, running.labels)
    assert (kept.storm_threshold, kept.log_level) == (500, "debug")
    assert kernel_settings_kept(running, Config()) == (running, [])
    assert set(KERNEL_SETTINGS) <= set(Config.__dataclass_fields__)
