"""Settings: defaults, YAML file, environment precedence, line validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from scrapvision.settings import LineSettings, MqttSettings, Settings, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CONFIG", "PORT", "WORKERS", "AUDIT__URL"):
        monkeypatch.delenv(f"SCRAPVISION_{name}", raising=False)


def test_defaults_serve_shipped_models_on_localhost() -> None:
    settings = load_settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.models_dir == Path("models")
    assert settings.lines == {} and settings.mqtt is None and settings.api_keys == []
    assert settings.audit.url.startswith("sqlite:///data/")


def test_yaml_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text("""
port: 9000
workers: 3
lines:
  line1:
    model: ewaste
    bins: {pcb: "1", battery: "2", cable: null}
    distance_m: 0.3
    belt_speed_m_s: 3.0
    valve_ms: 20
mqtt: {host: broker.local}
audit: {url: "sqlite:////tmp/x.db"}
""")
    monkeypatch.setenv("SCRAPVISION_WORKERS", "1")
    monkeypatch.setenv("SCRAPVISION_AUDIT__URL", "sqlite:////tmp/y.db")
    settings = load_settings(config)
    assert settings.port == 9000
    assert settings.workers == 1  # environment beats the file
    assert settings.audit.url == "sqlite:////tmp/y.db"
    line = settings.lines["line1"]
    assert line.bins == {"pcb": "1", "battery": "2", "cable": None}
    assert line.effective_deadline_ms == pytest.approx(80.0)
    assert settings.mqtt is not None and settings.mqtt.host == "broker.local"


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_settings(tmp_path / "nope.yaml")


def test_typo_in_config_is_refused() -> None:
    with pytest.raises(ValidationError, match="prot"):
        Settings(prot=1)


@pytest.mark.parametrize("section", [
    {"lines": {"l1": {"model": "m", "treshold": {"a": 0.9}}}},
    {"lines": {"l1": {"model": "m", "fusion": {"max_frame": 3}}}},
    {"audit": {"max_age_day": 30}},
    {"audit": {"frames": {"random_rat": 0.5}}},
    {"mqtt": {"hots": "broker"}},
    {"api_keys": [{"name": "a", "role": "qa", "sha256": "0" * 64, "sha": "x"}]},
])
def test_typo_in_a_nested_section_is_refused(section: dict) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        Settings(**section)


@pytest.mark.parametrize("name", ["line#1", "line/2", "line 3", "+", "x" * 65, ""])
def test_line_names_that_a_url_topic_or_audit_column_cannot_hold_are_refused(name: str) -> None:
    with pytest.raises(ValidationError, match="should match pattern"):
        Settings(lines={name: LineSettings(model="m")})
    assert list(Settings(lines={"Line-4.b_2": LineSettings(model="m")}).lines) == ["Line-4.b_2"]


@pytest.mark.parametrize(("topic", "message"), [
    ("plant/{site}/{line}", "only {line}"),
    ("plant/{}", "only {line}"),
    ("plant/+/{line}", "no '\\+' or '#'"),
    ("plant/{line}/#", "no '\\+' or '#'"),
    ("", "not empty"),
    ("plant/{line", "braces do not pair up"),
])
def test_an_mqtt_topic_that_cannot_be_published_on_is_refused(topic: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MqttSettings(topic=topic)
    assert MqttSettings(topic="plant/{line}/sort").topic == "plant/{line}/sort"


@pytest.mark.parametrize(("fields", "message"), [
    ({"distance_m": 0.3}, "both distance_m and belt_speed_m_s"),
    ({"deadline_ms": 50, "distance_m": 0.3, "belt_speed_m_s": 3}, "not both"),
    ({"distance_m": 0.03, "belt_speed_m_s": 3, "valve_ms": 20}, "no time"),
    ({"thresholds": {"a": 1.5}}, "within"),
])
def test_bad_line_config_says_why(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        LineSettings(model="m", **fields)


def test_inference_in_threads_needs_a_thread() -> None:
    assert Settings(inference="loop", inference_threads=0).inference_threads == 0
    with pytest.raises(ValidationError, match="needs inference_threads >= 1"):
        Settings(inference="threads", inference_threads=0)


def test_deadline_defaults_to_80_ms() -> None:
    assert LineSettings(model="m").effective_deadline_ms == 80.0
    assert LineSettings(model="m", deadline_ms=40).effective_deadline_ms == 40.0


def test_readme_configuration_example_is_valid(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = tmp_path / "example.yaml"
    config.write_text(example)
    settings = load_settings(config)
    line = settings.lines["ewaste-line-1"]
    assert line.effective_deadline_ms == pytest.approx(80.0)
    assert line.bins is not None and line.bins["Keyboard"] is None
    assert line.fusion is not None and settings.api_keys[0].role == "frames"


def test_audit_readme_settings_block_is_valid_and_shows_the_defaults() -> None:
    import yaml

    from scrapvision.audit.settings import AuditSettings

    readme = (Path(__file__).parents[1] / "src/scrapvision/audit/README.md").read_text()
    block = readme.split("## Settings", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    assert AuditSettings(**yaml.safe_load(block)["audit"]) == AuditSettings()
