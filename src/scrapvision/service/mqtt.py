"""Optional MQTT output: each decision as JSON on `scrapvision/lines/{line}/decisions`.

paho-mqtt runs its network loop in its own thread and queues outgoing messages (bounded by
`max_queued`), so `publish` never waits for the broker, and a broker that is down or slow
costs the request path nothing: messages beyond the bound are dropped and counted.
"""

from __future__ import annotations

import logging

import orjson
import paho.mqtt.client as mqtt

from scrapvision.records import DecisionRecord
from scrapvision.service.metrics import MQTT_NOT_PUBLISHED
from scrapvision.settings import MqttSettings

log = logging.getLogger(__name__)

class MqttPublisher:
    def __init__(self, settings: MqttSettings) -> None:
        self.settings = settings
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=settings.client_id)
        self.client.max_queued_messages_set(settings.max_queued)
        self.client.on_connect = self._on_connect
        self._topics: dict[str, str] = {}

    def start(self) -> None:
        """Connect in the background; the client reconnects by itself when the broker returns."""
        self.client.connect_async(self.settings.host, self.settings.port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def topic(self, line: str) -> str:
        topic = self._topics.get(line)
        if topic is None:
            topic = self._topics[line] = self.settings.topic.format(line=line)
        return topic

    def publish(self, record: DecisionRecord) -> None:
        payload = orjson.dumps(record.to_dict())
        info = self.client.publish(self.topic(record.line), payload, qos=self.settings.qos)
        # Disconnected, paho keeps QoS 1/2 messages (up to max_queued) to send on reconnect
        # and answers NO_CONN; only QoS 0 messages are dropped then.
        queued = info.rc == mqtt.MQTT_ERR_NO_CONN and self.settings.qos > 0
        if info.rc != mqtt.MQTT_ERR_SUCCESS and not queued:
            MQTT_NOT_PUBLISHED.labels(record.line).inc()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object,
                    reason: mqtt.ReasonCode, properties: object) -> None:
        log.info("mqtt connected", extra={"host": self.settings.host,
                                          "port": self.settings.port, "reason": str(reason)})
