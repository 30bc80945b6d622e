"""SIGHUP policy reload: a good file swaps the policy without touching state; a bad one is refused."""

from detector.app import build_app
from detector.config import load_settings
from detector.policy import default_policy_path, load_policy


def test_reload_swaps_a_good_policy_and_keeps_the_old_on_a_bad_one(tmp_path, caplog):
    app = build_app(load_settings(env={}), load_policy(), quiet=True)
    state_before = dict(app.states)
    good = tmp_path / "good.toml"
    good.write_text(default_policy_path().read_text().replace("default-2026.11", "tuned-1"))
    assert app.reload_policy(str(good)) is True
    assert app.pipeline.policy.version == "tuned-1"
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace("min_msgs_15s = 20", "min_msgs_15s = 'x'"))
    assert app.reload_policy(str(bad)) is False
    assert app.pipeline.policy.version == "tuned-1"
    assert "keeping version tuned-1" in caplog.text and "min_msgs_15s" in caplog.text
    assert app.states == state_before
