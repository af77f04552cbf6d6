import pytest

from ingest import config


def test_default_config_has_the_three_demo_labs():
    cfg = config.load()
    assert [lab.id for lab in cfg.labs] == ["DEMO-LUHN", "DEMO-GS1", "DEMO-M37"]
    assert cfg.person_window_ms == 12 * 3_600_000


@pytest.mark.parametrize("text, needle", [
    ("[rules]\nperson_other_tube_window_hours = 'x'\n", "person_other_tube_window_hours"),
    ("[limits]\nbody_bytes_max = -1\n", "body_bytes_max"),
    ("[nonsense]\n", "nonsense"),
    ("", "[[labs]]"),
    ("[[labs]]\nid='A'\nprefix='1'\nlength=5\ncharset='alnum'\ncheck='luhn'\n", "luhn needs charset digits"),
    ("[[labs]]\nid='A'\nprefix='12345'\nlength=5\ncharset='digits'\ncheck='luhn'\n", "prefix"),
])
def test_bad_config_names_the_problem(text, needle):
    with pytest.raises(config.ConfigError) as e:
        config.loads(text)
    assert needle in str(e.value)


def test_file_not_utf8(tmp_path):
    path = tmp_path / "utf16.toml"
    path.write_bytes("[rules]\n".encode("utf-16"))
    with pytest.raises(config.ConfigError) as e:
        config.load(str(path))
    assert str(e.value) == f"config: {path} is not UTF-8 text (byte 0: invalid start byte)"


def test_missing_file(tmp_path):
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(str(tmp_path / "nope.toml"))
