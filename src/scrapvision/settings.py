"""Service configuration: one place, YAML file + `SCRAPVISION_...` environment.

Precedence (highest first): explicit arguments, environment (`SCRAPVISION_PORT=9000`,
nested with `__`: `SCRAPVISION_AUDIT__URL=...`), the YAML file named by `--config` or
`SCRAPVISION_CONFIG`, then the embedded defaults, which serve every model in `models/`
on one line each, store decisions in SQLite under `data/` (`audit.url`), and publish
nothing to MQTT.

The config file travels to uvicorn worker processes through `SCRAPVISION_CONFIG`, so
every worker reads exactly the same settings.
"""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from scrapvision.audit.settings import AuditSettings
from scrapvision.configsection import ConfigSection
from scrapvision.registry import NAME_PATTERN

CONFIG_ENV = "SCRAPVISION_CONFIG"
DEFAULT_DEADLINE_MS = 80.0  # 0.3 m camera-to-ejector at 3 m/s, minus 20 ms valve time
DEFAULT_MIN_CONFIDENCE = 0.5
# A line name is a URL path segment, an MQTT topic level and a 64-character audit column:
# the registry's rule for model names.
LineName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


class FusionSettings(ConfigSection):
    """Average the probabilities of several frames of one item (same `item_id`)."""

    max_frames: int = Field(5, ge=2, description="frames of one item kept for fusion")
    window_s: float = Field(2.0, gt=0, description="frames older than this are forgotten")
    max_items: int = Field(10_000, ge=1, description="items tracked at once (memory bound)")


class LineSettings(ConfigSection):
    """One sorting line: which model judges it and how a class becomes an ejector action."""

    model: str = Field(description="model name in the registry; its active version is served")
    bins: dict[str, str | None] | None = Field(
        None,
        description="class -> bin / ejector; null or a class not listed = pass (no "
        "ejector). Omitted: every class gets its own bin, named after the class",
    )
    recirculate_bin: str = Field("recirculate", description="where unsure items go")
    deadline_ms: float | None = Field(
        None, gt=0, description="capture-to-fire budget; default from distance/speed or 80 ms"
    )
    distance_m: float | None = Field(None, gt=0, description="camera-to-ejector distance")
    belt_speed_m_s: float | None = Field(None, gt=0)
    valve_ms: float = Field(0.0, ge=0, description="ejector valve reaction time")
    thresholds: dict[str, float | None] = Field(
        default_factory=dict,
        description="per-class minimum calibrated probability to eject (null = never eject); "
        "overrides the model card's target-purity thresholds",
    )
    use_card_thresholds: bool = Field(
        True, description="take per-class thresholds from the model's card.json"
    )
    target_purity: float | None = Field(
        None, gt=0, le=1,
        description="bin purity the card's thresholds must have been chosen for; a model "
        "whose card says otherwise (or has no card) is refused for this line",
    )
    min_confidence: float = Field(
        DEFAULT_MIN_CONFIDENCE, ge=0, le=1,
        description="threshold for classes with neither a configured nor a card threshold",
    )
    top_k: int = Field(3, ge=1)
    max_in_flight: int = Field(
        16, ge=1, description="frames queued or running per worker process before 503 "
        "(about deadline / inference time: more would only turn late)"
    )
    fusion: FusionSettings | None = None

    @field_validator("thresholds")
    @classmethod
    def _probabilities(cls, value: dict[str, float | None]) -> dict[str, float | None]:
        for name, threshold in value.items():
            if threshold is not None and not 0 <= threshold <= 1:
                raise ValueError(f"threshold for '{name}' must be within [0, 1], is {threshold}")
        return value

    @model_validator(mode="after")
    def _deadline_given_once(self) -> "LineSettings":
        physical = self.distance_m is not None or self.belt_speed_m_s is not None
        if physical and (self.distance_m is None or self.belt_speed_m_s is None):
            raise ValueError("give both distance_m and belt_speed_m_s, or deadline_ms")
        if physical and self.deadline_ms is not None:
            raise ValueError("give deadline_ms or distance_m + belt_speed_m_s, not both")
        if self.effective_deadline_ms <= 0:
            raise ValueError("valve_ms leaves no time: distance / speed must exceed it")
        return self

    @property
    def effective_deadline_ms(self) -> float:
        """Capture-to-fire budget: the item reaches the ejector then, minus valve time."""
        if self.distance_m is not None and self.belt_speed_m_s is not None:
            return self.distance_m / self.belt_speed_m_s * 1000.0 - self.valve_ms
        return self.deadline_ms if self.deadline_ms is not None else DEFAULT_DEADLINE_MS


class ApiKey(ConfigSection):
    """An API key, stored as its SHA-256 hex digest (`scrapvision hash-key KEY` prints one)."""

    name: str
    role: str = Field(pattern="^(frames|qa|admin)$")
    sha256: str = Field(pattern="^[0-9a-f]{64}$")


class MqttSettings(ConfigSection):
    host: str = "127.0.0.1"
    port: int = 1883
    topic: str = Field("scrapvision/lines/{line}/decisions", description="{line} is replaced")
    qos: int = Field(0, ge=0, le=2)
    client_id: str = ""
    max_queued: int = Field(10_000, ge=1, description="messages buffered while disconnected")

    @field_validator("topic")
    @classmethod
    def _publishable(cls, topic: str) -> str:
        """Refused at startup, not by paho on every decision once the service runs."""
        try:
            fields = {field for _, field, _, _ in string.Formatter().parse(topic)
                      if field is not None}
        except ValueError as exc:
            raise ValueError(f"the topic's braces do not pair up ({exc})") from None
        if fields - {"line"}:
            raise ValueError(f"the topic may hold only {{line}}, not {sorted(fields - {'line'})}")
        if not topic or "+" in topic or "#" in topic:
            raise ValueError("an MQTT topic to publish on is not empty and holds no '+' or '#'")
        return topic


class Settings(BaseSettings):
    """Everything `scrapvision serve` needs; see the README "Configuration" section."""

    model_config = SettingsConfigDict(
        env_prefix="SCRAPVISION_", env_nested_delimiter="__", extra="forbid"
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(2, ge=1, description="uvicorn worker processes (default: 2 = cores here)")
    ort_threads: int = Field(1, ge=1, description="onnxruntime intra-op threads per engine")
    inference: Literal["loop", "threads"] = Field(
        "loop", description="where decode + inference run: on each worker's event loop "
        "(no hand-off: fastest when workers x ort_threads fill the cores), or in threads "
        "so the loop stays free"
    )
    inference_threads: int = Field(
        1, ge=0, description="threads per model and process: with inference 'loop' they "
        "stand by for frames that waited a quarter of their deadline behind the loop (a "
        "worker holding most of the streams can use another core too); with 'threads' they "
        "take the frames"
    )
    max_batch: int = Field(
        1, ge=1, description="frames per onnxruntime call, from those already waiting "
        "(1 = no micro-batching: best on small CPUs)"
    )
    models_dir: Path = Path("models")
    lines: dict[LineName, LineSettings] = Field(
        default_factory=dict, description="empty: one line per registry model, named after it; "
        "names: up to 64 letters, digits, '_', '.', '-'"
    )
    max_frame_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_batch_frames: int = Field(64, ge=1)
    max_batch_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="limit of a batch body (and at most "
        "max_batch_frames x max_frame_bytes): what one connection can make the service hold")
    max_json_bytes: int = Field(
        64 * 1024, ge=1024, description="limit of other (JSON) bodies: model loads, reviews")
    max_pixels: int = Field(40_000_000, ge=1)
    model_poll_s: float = Field(
        1.0, gt=0, description="how often workers check active.json for a promoted version"
    )
    api_keys: list[ApiKey] = Field(default_factory=list)
    mqtt: MqttSettings | None = None
    audit: AuditSettings = Field(default_factory=AuditSettings)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _threads_to_infer(self) -> "Settings":
        if self.inference == "threads" and self.inference_threads == 0:
            raise ValueError("inference 'threads' needs inference_threads >= 1")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = os.environ.get(CONFIG_ENV)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from `config_file` (or `$SCRAPVISION_CONFIG`) + environment + overrides.

    A named file that does not exist is an error, not silently the defaults.
    """
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        os.environ[CONFIG_ENV] = str(path.resolve())
    elif (named := os.environ.get(CONFIG_ENV)) and not Path(named).is_file():
        raise FileNotFoundError(f"{CONFIG_ENV}={named} does not exist")
    return Settings(**overrides)
