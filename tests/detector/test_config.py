"""Settings: defaults < TOML < BULKWATCH_* env < CLI, validated with errors that name the setting."""

import pytest

from detector.config import Settings, SettingsError, load_settings


def test_defaults_are_the_documented_ones():
    s = load_settings(env={})
    assert s == Settings()
    assert (s.source, s.topics, s.group) == ("simulator", ("events",), "bulkwatch")
    assert (s.signals_topic, s.dlq_topic, s.metrics_port) == ("ban-signals", "events-dlq", 9108)


def test_precedence_file_then_env_then_overrides(tmp_path):
    config = tmp_path / "bulkwatch.toml"
    config.write_text(
        'group = "from-file"\nmetrics_port = 9000\ntopics = ["a", "b"]\nbatch_size = 10\n'
    )
    env = {"BULKWATCH_METRICS_PORT": "9001", "BULKWATCH_EXACTLY_ONCE": "true", "OTHER": "x"}
    s = load_settings(config, env=env, overrides={"batch_size": 20, "group": None})
    assert s.group == "from-file"
    assert s.topics == ("a", "b")
    assert s.metrics_port == 9001
    assert s.exactly_once is True
    assert s.batch_size == 20


def test_env_lists_and_optional_values():
    s = load_settings(env={"BULKWATCH_TOPICS": "events, more", "BULKWATCH_RATE": "2500.5"})
    assert s.topics == ("events", "more") and s.rate == 2500.5
    assert load_settings(env={"BULKWATCH_SNAPSHOT_DIR": ""}).snapshot_dir is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BULKWATCH_METRICS_PORT": "abc"}, "BULKWATCH_METRICS_PORT"),
        ({"BULKWATCH_METRICS_PORT": "70000"}, "metrics_port"),
        ({"BULKWATCH_SOURCE": "carrier-pigeon"}, "expected one of"),
        ({"BULKWATCH_BATCH_SIZE": "0"}, "batch_size: must be > 0"),
        ({"BULKWATCH_EXACTLY_ONCE": "maybe"}, "expected a boolean"),
        ({"BULKWATCH_SECURITY_PROTOCOL": "SASL_SSL"}, "needs sasl_mechanism"),
        ({"BULKWATCH_POLICY": "/nonexistent/policy.toml"}, "no such file"),
    ],
)
def test_bad_values_fail_with_a_clear_error(env, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(env=env)


def test_unknown_env_variables_are_ignored_with_a_warning(caplog):
    s = load_settings(env={"BULKWATCH_KAFKA_DIR": "/tmp/x", "BULKWATCH_GROUP": "g"})
    assert s.group == "g"
    assert "ignoring BULKWATCH_KAFKA_DIR" in caplog.text


def test_unknown_keys_in_a_file_are_errors(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("metrics_prot = 1\n")
    with pytest.raises(SettingsError, match="unknown setting 'metrics_prot'"):
        load_settings(config, env={})


def test_bad_toml_names_the_file(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("metrics_port = [\n")
    with pytest.raises(SettingsError, match=r"bad\.toml: invalid TOML"):
        load_settings(config, env={})
    config.write_text('metrics_port = "x"\n')
    with pytest.raises(SettingsError, match=r"bad\.toml: metrics_port: expected an integer"):
        load_settings(config, env={})


def test_sasl_options_pass_through():
    s = load_settings(
        env={},
        overrides={
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "bw",
            "sasl_password": "secret",
        },
    )
    assert s.kafka_security() == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "bw",
        "sasl_plain_password": "secret",
    }
