import socket
import subprocess
import sys

import msgspec
import pytest
from helpers import LABS_TOML, REPO, stderr_lines

from ingest import codes, config

RUN_TIMEOUT_S = 60


def test_default_config_has_the_three_demo_labs():
    cfg = config.load()
    assert [lab.id for lab in cfg.labs] == ["DEMO-LUHN", "DEMO-GS1", "DEMO-M37"]
    assert cfg.person_window_ms == 12 * 3_600_000


def test_edit_changes_a_setting_in_its_section_only():
    text = config.default_text()
    edited = config.edit(text, 'tls_cert_file = ""', 'tls_cert_file = "/x.pem"', "http")
    edited = config.edit(edited, 'tls_key_file = ""', 'tls_key_file = "/x.key"', "http")
    cfg = config.loads(edited)
    assert (cfg.http.tls_cert_file, cfg.http.tls_key_file) == ("/x.pem", "/x.key")
    assert cfg.replication.tls_cert_file == ""  # the same key in [replication] is left alone
    assert config.edit(text, 'mode = "async"', 'mode = "sync"', "replication").count('mode = "sync"') == 1
    assert config.edit("[a]\nx = 1\n", "x = 1", "x = 2", "a") == "[a]\nx = 2\n"


@pytest.mark.parametrize("old, section, message", [
    ("nope = 1", None, "no 'nope = 1' to change"),
    ('mode = "async"', "http", "no 'mode = \"async\"' in [http] to change"),  # it is in [replication]
    ('mode = "async"', "nowhere", "no [nowhere] section"),
])
def test_edit_refuses_a_setting_that_is_not_there(old, section, message):
    # A drill or a benchmark that silently ran on other settings would prove the wrong thing.
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config.edit(config.default_text(), old, "x", section)


@pytest.mark.parametrize("text, needle", [
    ("[rules]\nperson_other_tube_window_hours = 'x'\n", "person_other_tube_window_hours"),
    ("[limits]\nbody_bytes_max = -1\n", "body_bytes_max"),
    ("[nonsense]\n", "nonsense"),
    ("", "[[labs]]"),
    ("[[labs]]\nid='A'\nprefix='1'\nlength=5\ncharset='alnum'\ncheck='luhn'\n", "luhn needs charset digits"),
    ("[[labs]]\nid='A'\nprefix='77'\nlength=10\ncharset='digits'\ncheck='mod37_36'\n", "it needs charset alnum"),
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


# -- bounds: every number has a finite range, named with the key ----------------

def _lab(id="X", prefix="77", length=10, charset="digits", check="luhn") -> str:
    return f'\n[[labs]]\nid = "{id}"\nprefix = "{prefix}"\nlength = {length}\ncharset = "{charset}"\ncheck = "{check}"\n'


# Each of these passed before and broke later: a traceback (OverflowError)
# at start, every connection hanging, every binding a 500, MDB_MAP_FULL.
OUT_OF_RANGE = [
    ("[rules]\nscanned_at_age_days_max = inf\n", "rules.scanned_at_age_days_max must be above 0, at most 3_650, not inf"),
    ("[rules]\nperson_other_tube_window_hours = inf\n",
     "rules.person_other_tube_window_hours must be from 0 to 87_600, not inf"),
    ("[rules]\nperson_other_tube_window_hours = 1e13\n",
     "rules.person_other_tube_window_hours must be from 0 to 87_600, not 1e+13"),
    ("[rules]\nscanned_at_future_minutes_max = nan\n", "rules.scanned_at_future_minutes_max must be from 0 to 525_600"),
    ("[limits]\nheader_bytes_max = 99999999999999999999\n",
     "limits.header_bytes_max must be from 1 to 1_073_741_824, not 99_999_999_999_999_999_999"),
    ("[limits]\nbody_bytes_max = 1073741825\n", "limits.body_bytes_max must be from 1 to 1_073_741_824"),
    ("[limits]\nrequest_seconds_max = inf\n", "limits.request_seconds_max must be above 0, at most 86_400"),
    ("[limits]\nkeepalive_seconds_max = 1e9\n", "limits.keepalive_seconds_max must be above 0, at most 86_400"),
    ("[limits]\ndrain_seconds_max = inf\n", "limits.drain_seconds_max must be above 0, at most 86_400"),
    ("[limits]\nconnections_max = 1000001\n", "limits.connections_max must be from 1 to 1_000_000"),
    ("[limits]\npipeline_depth_max = 9223372036854775808\n", "limits.pipeline_depth_max must be from 1 to 65_536"),
    ("[limits]\ncommit_events_max = 0\n", "limits.commit_events_max must be from 1 to 1_000_000, not 0"),
    ("[store]\nmap_bytes_initial = 65536\n", "store.map_bytes_initial must be from 262_144 to 1_125_899_906_842_624"),
    ("[store]\nmap_bytes_max = 1267650600228229401496703205376\n", "store.map_bytes_max must be from 262_144"),
    ("[replication]\nsync_timeout_s = inf\n", "replication.sync_timeout_s must be above 0, at most 86_400, not inf"),
    ("[replication]\nlog_keep_entries = -1\n", "replication.log_keep_entries must be from 0 to 1_000_000_000_000"),
]


@pytest.mark.parametrize("section, message", OUT_OF_RANGE, ids=[m.split()[0] for _, m in OUT_OF_RANGE])
def test_number_out_of_range_names_key_range_and_value(section, message):
    with pytest.raises(config.ConfigError) as e:
        config.loads(section + LABS_TOML)
    assert str(e.value).startswith(f"config: {message}"), str(e.value)


def test_numbers_at_their_bounds_are_accepted():
    cfg = config.loads(
        "[rules]\nperson_other_tube_window_hours = 87_600\nscanned_at_future_minutes_max = 0\n"
        "scanned_at_age_days_max = 3_650\n"
        "[limits]\nbody_bytes_max = 1_073_741_824\nheader_bytes_max = 1_073_741_824\ndrain_seconds_max = 86_400\n"
        "pipeline_depth_max = 65_536\n"
        "[store]\nmap_bytes_initial = 262_144\nmap_bytes_max = 1_125_899_906_842_624\n" + LABS_TOML
    )
    # The kernels take these as C long longs.
    assert cfg.person_window_ms == 87_600 * 3_600_000 < 2**63
    assert cfg.age_ms_max == 3_650 * 86_400_000
    assert cfg.store.map_bytes_initial == 256 << 10


def test_map_initial_above_max_names_both():
    with pytest.raises(config.ConfigError) as e:
        config.loads("[store]\nmap_bytes_initial = 2_147_483_648\nmap_bytes_max = 1_073_741_824\n" + LABS_TOML)
    assert str(e.value) == ("config: store.map_bytes_initial (2_147_483_648) exceeds "
                            "store.map_bytes_max (1_073_741_824)")


# -- labs: the table the server compiles is checked here, not after the store is open

BAD_LABS = [
    (_lab(id="X", prefix="10"), "config: labs DEMO-LUHN and X have the same prefix 10"),
    (_lab(id="<unknown lab>"), "config: lab <unknown lab>: the id is reserved"),
    (_lab(id="<invalid tube>"), "config: lab <invalid tube>: the id is reserved"),
    (_lab(prefix="7A", charset="digits", check="none"), "config: lab X: a digits scheme needs a digit prefix"),
    (_lab(prefix="7777", length=4), "config: lab X: prefix must be shorter than length"),
    (_lab(id="DEMO-GS1"), "config: lab ids must be unique"),
]


@pytest.mark.parametrize("lab, message", BAD_LABS,
                         ids=["same-prefix", "reserved-unknown", "reserved-invalid", "charset", "length", "same-id"])
def test_bad_lab_is_a_config_error_naming_it(lab, message):
    with pytest.raises(config.ConfigError) as e:
        config.loads(LABS_TOML + lab)
    assert str(e.value).startswith(message), str(e.value)


def test_tube_schemes_are_the_labs_compiled():
    schemes = config.tube_schemes(config.load().labs)
    assert schemes.labs == ("DEMO-LUHN", "DEMO-GS1", "DEMO-M37")
    assert schemes.lab_of("10") == codes.LAB_INVALID_TUBE


# -- through the command: exit 2, one line, nothing opened ---------------------------

def serve(tmp_path, *args, config_text=None, timeout=RUN_TIMEOUT_S):
    cmd = [sys.executable, "-m", "ingest", "serve", "--data", str(tmp_path / "data"), "--host", "127.0.0.1",
           "--port", "0"]
    if config_text is not None:
        path = tmp_path / "config.toml"
        path.write_text(config_text)
        cmd += ["--config", str(path)]
    return subprocess.run(cmd + list(args), cwd=tmp_path, capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)


def assert_refused(result, tmp_path, starts):
    assert result.returncode == 2, result.stderr
    lines = stderr_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"ingest: {starts}"), result.stderr
    # Refused before the store was opened (or created).
    assert not (tmp_path / "data").exists()


CLI_BAD = [
    (LABS_TOML + _lab(id="X", prefix="10"), "config: labs DEMO-LUHN and X have the same prefix 10"),
    (LABS_TOML + _lab(id="<unknown lab>"), "config: lab <unknown lab>: the id is reserved"),
    ("[rules]\nscanned_at_age_days_max = inf\n" + LABS_TOML, "config: rules.scanned_at_age_days_max"),
    ("[rules]\nperson_other_tube_window_hours = 1e13\n" + LABS_TOML, "config: rules.person_other_tube_window_hours"),
    ("[limits]\nheader_bytes_max = 99999999999999999999\n" + LABS_TOML, "config: limits.header_bytes_max"),
    ("[store]\nmap_bytes_initial = 65536\n" + LABS_TOML, "config: store.map_bytes_initial"),
]


@pytest.mark.parametrize("text, starts", CLI_BAD,
                         ids=["same-prefix", "reserved-id", "inf-age", "huge-window", "huge-header", "tiny-map"])
def test_serve_refuses_bad_config_with_exit_2(tmp_path, text, starts):
    assert_refused(serve(tmp_path, config_text=text), tmp_path, starts)


SYNC = LABS_TOML + '\n[replication]\nmode = "sync"\n'


def test_sync_primary_without_replication_port_is_refused(tmp_path):
    """Without a replication port no standby can follow and the sync gate is
    never installed: every write would be acknowledged from one disk."""
    result = serve(tmp_path, config_text=SYNC)
    assert_refused(result, tmp_path, 'config: replication.mode is "sync" but no --replication-port is given')
    assert "--replication-port" in result.stderr and 'mode = "async"' in result.stderr


def test_sync_config_on_a_standby_starts_with_a_replication_port(server_factory):
    """The same config file serves both nodes."""
    with socket.socket() as nobody:  # a primary that is not there: the standby keeps retrying
        nobody.bind(("127.0.0.1", 0))
        standby = server_factory(config=SYNC, args=("--follow", f"127.0.0.1:{nobody.getsockname()[1]}",
                                                    "--replication-port", "0"))
    assert standby.status()["role"] == "standby"


def test_sync_standby_without_replication_port_is_refused(tmp_path):
    """Promoted, it is the primary: started without a replication port it
    acknowledged every write from one disk, and nothing said so."""
    with socket.socket() as nobody:
        nobody.bind(("127.0.0.1", 0))
        result = serve(tmp_path, "--follow", f"127.0.0.1:{nobody.getsockname()[1]}", config_text=SYNC)
    assert_refused(result, tmp_path, 'config: replication.mode is "sync" but no --replication-port is given, '
                                     'so a standby, once promoted,')


# -- docs/operations.md: one table, every key, the shipped defaults ---------------

def config_table() -> dict[str, list[str]]:
    """The rows of the configuration table, by their key cell; it ends at
    its first line that is not a row (a blank line there would split it)."""
    lines = (REPO / "docs" / "operations.md").read_text().splitlines()
    start = lines.index("| key | default | allowed | why |")
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells
    return rows


def test_operations_doc_lists_every_key_in_one_table():
    documented = " ".join(config_table())
    for section in msgspec.structs.fields(config.Config):
        if section.name == "labs":
            continue
        for key in msgspec.structs.fields(section.type):
            assert f"`{section.name}.{key.name}`" in documented or f"`{key.name}`" in documented, key.name


def test_operations_doc_gives_the_shipped_map_sizes():
    rows, store = config_table(), config.load().store
    assert rows["`store.map_bytes_initial`"][1] == f"{store.map_bytes_initial >> 20} MiB"
    assert rows["`store.map_bytes_max`"][1] == f"{store.map_bytes_max >> 40} TiB"


def test_a_utf8_file_with_a_bom_is_read(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + ('[stats]\ntime_zone = "Asia/Shanghai"\n' + LABS_TOML).encode())
    assert config.load(str(path)).stats.time_zone == "Asia/Shanghai"


@pytest.mark.parametrize("zone", ["localtime", "posixrules"])
def test_a_time_zone_that_names_the_machines_own_setting_is_refused(zone):
    # Two nodes would keep the same name and count one log in different zones.
    with pytest.raises(config.ConfigError, match="name the IANA zone itself"):
        config.loads(f'[stats]\ntime_zone = "{zone}"\n' + LABS_TOML)


def test_an_unknown_time_zone_is_refused():
    with pytest.raises(config.ConfigError, match="unknown time zone 'Mars/Olympus'"):
        config.loads('[stats]\ntime_zone = "Mars/Olympus"\n' + LABS_TOML)
