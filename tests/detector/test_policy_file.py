"""Policy files: the packaged default loads; invalid files fail naming the key and the problem."""

import re
from pathlib import Path

import pytest

from detector.events import account_id
from detector.policy import REASON_CODES, Action, PolicyError, default_policy_path, load_policy

DEFAULT = default_policy_path().read_text()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def test_default_policy_loads_with_every_rule_enforced():
    policy = load_policy()
    assert policy.version
    assert set(policy.rules) == set(REASON_CODES)
    assert all(policy.mode(code) == "enforce" for code in REASON_CODES)
    assert policy.action_scores == (1.0, 2.0, 3.0)
    assert policy.tier_limits == (250, 1000, 10000, 100000)


def test_modes_allowlist_and_tiers(tmp_path):
    (tmp_path / "allow.txt").write_text("+447700900001\n\n+447700900002\n")
    (tmp_path / "tiers.csv").write_text("account,tier\n+15550001,2\n+15550002,4\n")
    text = DEFAULT.replace('[allowlist]\nfile = ""', '[allowlist]\nfile = "allow.txt"').replace(
        'tier_file = ""', 'tier_file = "tiers.csv"'
    )
    text = text.replace('[rules.HIGH_RATE]\nmode = "enforce"', '[rules.HIGH_RATE]\nmode = "shadow"')
    policy = load_policy(write(tmp_path, text))
    assert policy.mode("HIGH_RATE") == "shadow"
    assert policy.allowlist == {account_id("+447700900001"), account_id("+447700900002")}
    assert policy.allowlist_max_action == Action.REVIEW
    assert policy.account_tiers == {account_id("+15550001"): 2, account_id("+15550002"): 4}


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('version = "default-2026.11"', 'version = ""', "version: required"),
        (
            "min_msgs_15s = 20",
            'min_msgs_15s = "twenty"',
            "rules.NEW_ACCOUNT_BURST.min_msgs_15s: must be a number",
        ),
        (
            "min_msgs_15s = 20",
            "min_msgs_15s = -1",
            "rules.NEW_ACCOUNT_BURST.min_msgs_15s: must be >= 0",
        ),
        (
            "min_msgs_15s = 20",
            "min_msgs_15z = 20",
            "rules.NEW_ACCOUNT_BURST.min_msgs_15z: unknown threshold",
        ),
        (
            '[rules.HIGH_RATE]\nmode = "enforce"',
            '[rules.HIGH_RATE]\nmode = "loud"',
            "rules.HIGH_RATE.mode: must be one of",
        ),
        ("[rules.GROUP_SPAM]", "[rules.GROUP_SPAMMING]", "rules.GROUP_SPAMMING: unknown rule"),
        ("ban = 3.0", "ban = 1.5", "actions: scores must rise strictly"),
        (
            "tier_limits = [250, 1000, 10000, 100000]",
            "tier_limits = [1000, 250]",
            "business.tier_limits",
        ),
        ("default_tier = 0", "default_tier = 9", "business.default_tier"),
        ('[allowlist]\nfile = ""', '[allowlist]\nfile = "x.txt"', "allowlist.file: no such file"),
        ('max_action = "review"', 'max_action = "smite"', "allowlist.max_action"),
        ("cooldown_s = 3600", "cooldown_s = nan", "signals.cooldown_s: must be a number"),
        ("[signals]", "[signal]", "unknown key 'signal'"),
    ],
)
def test_invalid_policy_names_key_and_problem(tmp_path, old, new, message):
    assert old in DEFAULT
    path = write(tmp_path, DEFAULT.replace(old, new, 1))
    with pytest.raises(PolicyError, match=re.escape(message)):
        load_policy(path)


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "nope.toml")
    with pytest.raises(PolicyError, match="invalid TOML"):
        load_policy(write(tmp_path, "version = \n"))


def test_bad_tier_file_line(tmp_path):
    (tmp_path / "tiers.csv").write_text("+15550001,7\n")
    text = DEFAULT.replace('tier_file = ""', 'tier_file = "tiers.csv"')
    with pytest.raises(PolicyError, match="tier_file line 1"):
        load_policy(write(tmp_path, text))
