"""Settings: defaults < TOML < BULKWATCH_* env < CLI, validated with errors that name the setting."""

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.config import (
    ACCOUNT_CAPACITY_MAX,
    ACCOUNT_TTL_S_MAX,
    LATENESS_S_MAX,
    Settings,
    SettingsError,
    load_settings,
    replace,
)
from kernels.accounts import MAX_LATENESS_S, MAX_TTL_S, new_account_state


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
        ({"BULKWATCH_SECURITY_PROTOCOL": "SASL_SSL"}, "sasl_mechanism: required with"),
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


def test_kernel_limits_are_the_kernels_own():
    # 6 h and 30 days, as kernels/accounts.py documents, taken from the kernel rather than copied
    assert (LATENESS_S_MAX, ACCOUNT_TTL_S_MAX) == (MAX_LATENESS_S, MAX_TTL_S) == (21_600, 2_592_000)
    # the kernel accepts the largest values the settings allow, and rejects one more
    new_account_state(16, lateness_s=LATENESS_S_MAX, ttl_s=ACCOUNT_TTL_S_MAX)
    with pytest.raises(ValueError, match="lateness_s"):
        new_account_state(16, lateness_s=LATENESS_S_MAX + 1)
    with pytest.raises(ValueError, match="ttl_s"):
        new_account_state(16, ttl_s=ACCOUNT_TTL_S_MAX + 1)
    with pytest.raises(ValueError, match="capacity"):
        new_account_state(ACCOUNT_CAPACITY_MAX + 1)


@pytest.mark.parametrize(
    ("name", "inside", "outside", "limit"),
    [
        ("lateness_s", [0, 21_600], [-1, 21_601], "lateness_s: must be in [0, 21600] (6 h"),
        (
            "account_ttl_s",
            [1, 2_592_000],
            [0, 2_592_001],
            "account_ttl_s: must be in [1, 2592000] (30 days",
        ),
        ("account_capacity", [1], [0, ACCOUNT_CAPACITY_MAX + 1], "account_capacity: must be in"),
        ("cluster_capacity", [1], [0, -5], "cluster_capacity: must be > 0"),
        ("metrics_port", [0, 65_535], [-1, 65_536], "metrics_port: must be in [0, 65535]"),
        ("max_inflight_batches", [1], [0], "max_inflight_batches: must be > 0"),
        ("batch_max_wait_ms", [1], [0], "batch_max_wait_ms: must be > 0"),
        ("sim_seed", [0], [-1], "sim_seed: must be >= 0"),
    ],
)
def test_integer_limits_are_inclusive_and_named(name, inside, outside, limit):
    for value in inside:
        assert getattr(load_settings(env={}, overrides={name: value}), name) == value
    for value in outside:
        with pytest.raises(SettingsError) as caught:
            load_settings(env={}, overrides={name: value})
        assert str(caught.value).startswith(f"--{name.replace('_', '-')}: {name}: ")
        assert limit in str(caught.value) and f"got {value}" in str(caught.value)
        assert caught.value.setting == name


@settings(max_examples=100, deadline=None)
@given(lateness_s=st.integers(-(2**40), 2**40), ttl_s=st.integers(-(2**40), 2**40))
def test_settings_accept_exactly_what_the_account_kernel_accepts(lateness_s, ttl_s):
    """A value passes validation iff new_account_state takes it: no start-up that dies later."""
    try:
        new_account_state(16, lateness_s=lateness_s, ttl_s=ttl_s)
        kernel_ok = True
    except ValueError:
        kernel_ok = False
    try:
        Settings(lateness_s=lateness_s, account_ttl_s=ttl_s)
        settings_ok = True
    except SettingsError:
        settings_ok = False
    assert settings_ok == kernel_ok


def test_errors_name_the_origin_of_the_value(tmp_path):
    config = tmp_path / "bulkwatch.toml"
    config.write_text("lateness_s = 86400\n")
    with pytest.raises(SettingsError, match=r"bulkwatch\.toml: lateness_s: lateness_s: must be"):
        load_settings(config, env={})
    with pytest.raises(SettingsError, match=r"^BULKWATCH_ACCOUNT_TTL_S: account_ttl_s: must be"):
        load_settings(env={"BULKWATCH_ACCOUNT_TTL_S": str(31 * 86_400)})
    # a default out of range with no origin still names the setting
    with pytest.raises(SettingsError, match=r"^lateness_s: must be"):
        Settings(lateness_s=-1)


@pytest.mark.parametrize(
    "name", ["snapshot_interval_s", "shutdown_timeout_s", "rate", "duration_s"]
)
@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "-inf"])
def test_durations_and_rates_must_be_finite_and_positive(name, text):
    # NaN compares False with everything: a plain "<= 0" check would let it through
    with pytest.raises(SettingsError, match=f"{name}: must be a finite number > 0"):
        load_settings(env={f"BULKWATCH_{name.upper()}": text})
    assert getattr(load_settings(env={f"BULKWATCH_{name.upper()}": "0.5"}), name) == 0.5


@pytest.mark.parametrize(
    "bootstrap",
    ["127.0.0.1:9092", "kafka-1:9094,kafka-2:9094", "kafka", "[::1]:9092", "::1", "a:1, b:65535"],
)
def test_good_bootstrap_lists(bootstrap):
    assert load_settings(env={}, overrides={"bootstrap": bootstrap}).bootstrap == bootstrap


@pytest.mark.parametrize(
    ("bootstrap", "message"),
    [
        ("", "expected host:port"),
        ("a:9092,", "expected host:port"),
        (":9092", "expected host:port"),
        ("kafka:0", "port of 'kafka:0' must be in [1, 65535]"),
        ("kafka:65536", "port of 'kafka:65536'"),
        ("kafka:x", "port of 'kafka:x'"),
        ("[::1]x", "port of '[::1]x'"),
    ],
)
def test_bad_bootstrap_lists(bootstrap, message):
    with pytest.raises(SettingsError, match=f"bootstrap: .*{message}".replace("[", r"\[")):
        load_settings(env={}, overrides={"bootstrap": bootstrap})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"topics": ("events", "bad topic")}, "topics: 'bad topic' is not a Kafka topic name"),
        ({"signals_topic": "x" * 250}, "signals_topic: 'x+' is not a Kafka topic name"),
        ({"dlq_topic": ".."}, "dlq_topic: '..' is not a Kafka topic name"),
        ({"signals_topic": "events"}, "signals_topic: 'events' is also an input topic"),
        ({"topics": ("a", "events-dlq")}, "dlq_topic: 'events-dlq' is also an input topic"),
        ({"dlq_topic": "ban-signals"}, "dlq_topic: must differ from signals_topic"),
        ({"group": " "}, "group: must not be empty"),
        ({"client_id": ""}, "client_id: must not be empty"),
        ({"log_level": "LOUD"}, "log_level: expected one of DEBUG, INFO"),
    ],
)
def test_topic_and_name_settings(overrides, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(env={}, overrides=overrides)


def test_topic_names_at_the_limit_and_lowercase_log_levels_are_fine():
    s = load_settings(env={}, overrides={"signals_topic": "s" * 249, "log_level": "debug"})
    assert len(s.signals_topic) == 249 and s.log_level == "debug"


@pytest.fixture
def pem(tmp_path):
    path = tmp_path / "ca.pem"
    path.write_text("not checked here: aiokafka's create_ssl_context reads it\n")
    return str(path)


def test_security_combinations_that_work(pem):
    tls = load_settings(
        env={},
        overrides={"security_protocol": "SSL", "ssl_cafile": pem, "ssl_certfile": pem},
    )
    assert tls.kafka_security() == {"security_protocol": "SSL"}
    sasl = load_settings(
        env={"BULKWATCH_SASL_PASSWORD": "pw"},
        overrides={
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_username": "u",
        },
    )
    assert sasl.kafka_security()["sasl_plain_password"] == "pw"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"ssl_cafile": "PEM"},
            "ssl_cafile: set, but security_protocol PLAINTEXT does not use TLS",
        ),
        (
            {"security_protocol": "SASL_PLAINTEXT", "ssl_certfile": "PEM"},
            "ssl_certfile: set, but security_protocol SASL_PLAINTEXT does not use TLS",
        ),
        ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"}, "ssl_cafile: no such"),
        ({"security_protocol": "SSL", "ssl_keyfile": "PEM"}, "ssl_keyfile: needs ssl_certfile"),
        ({"sasl_username": "u"}, "sasl_username: set, but security_protocol PLAINTEXT does not"),
        ({"security_protocol": "SSL", "sasl_password": "p"}, "sasl_password: set, but"),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u"},
            "sasl_password: required with security_protocol SASL_SSL",
        ),
    ],
)
def test_security_misconfigurations_fail_at_start(pem, overrides, message):
    overrides = {k: pem if v == "PEM" else v for k, v in overrides.items()}
    with pytest.raises(SettingsError, match=message):
        load_settings(env={}, overrides=overrides)


def test_snapshot_dir_must_not_be_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SettingsError, match=r"snapshot_dir: .* is not a directory"):
        load_settings(env={}, overrides={"snapshot_dir": str(tmp_path / "file")})
    fresh = str(tmp_path / "not-yet")  # created by the service
    assert load_settings(env={}, overrides={"snapshot_dir": fresh}).snapshot_dir == fresh


def test_replace_validates_and_converts():
    base = Settings()
    assert replace(base, lateness_s=60).lateness_s == 60
    assert replace(base, topics=["a", "b"]).topics == ("a", "b")
    with pytest.raises(SettingsError, match=r"^lateness_s: must be in \[0, 21600\]"):
        replace(base, lateness_s=LATENESS_S_MAX + 1)
    assert dataclasses.asdict(replace(base)) == dataclasses.asdict(base)


def test_group_instance_id_is_unset_by_default_and_comes_from_the_environment():
    assert Settings().group_instance_id is None
    assert load_settings(env={"BULKWATCH_GROUP_INSTANCE_ID": ""}).group_instance_id is None
    pod_name = "bulkwatch-6f9c7d8b5-x2k4q"
    assert (
        load_settings(env={"BULKWATCH_GROUP_INSTANCE_ID": pod_name}).group_instance_id == pod_name
    )
    assert Settings(group_instance_id="a" * 249).group_instance_id == "a" * 249


@pytest.mark.parametrize("instance_id", ["pod 1", "x" * 250, "pod/1", "é", ".."])
def test_group_instance_id_must_be_a_valid_kafka_id(instance_id):
    with pytest.raises(SettingsError, match=r"group_instance_id: .* is not a valid Kafka group"):
        load_settings(env={"BULKWATCH_GROUP_INSTANCE_ID": instance_id})
