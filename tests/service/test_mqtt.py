"""Decisions published to the real MQTT broker on 127.0.0.1:1883 (skipped without one)."""

from __future__ import annotations

import json
import queue
import socket

import paho.mqtt.client as mqtt
import pytest
from tinymodel import colour_frame

from scrapvision.settings import MqttSettings
from tests.service.conftest import frame_headers


def _broker_missing() -> str | None:
    try:
        socket.create_connection(("127.0.0.1", 1883), timeout=1).close()
    except OSError as exc:
        return f"no MQTT broker on 127.0.0.1:1883 ({exc})"
    return None


pytestmark = [pytest.mark.mqtt,
              pytest.mark.skipif(_broker_missing() is not None,
                                 reason=_broker_missing() or "")]


def test_each_decision_is_published_on_the_line_topic(make_client) -> None:
    received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    subscribed = queue.Queue()
    listener = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    listener.on_message = lambda client, userdata, message: received.put(message)
    listener.on_subscribe = lambda *args: subscribed.put(True)
    listener.connect("127.0.0.1", 1883)
    listener.loop_start()
    topic = "scrapvision-test/lines/{line}/decisions"
    try:
        listener.subscribe(topic.format(line="tiny"))
        subscribed.get(timeout=10)
        client = make_client(mqtt=MqttSettings(topic=topic, client_id="scrapvision-test"))
        publisher = client.app.state.lines["tiny"].sink.publisher
        connected = queue.Queue()
        publisher.client.on_connect = lambda *args: connected.put(True)
        if not publisher.client.is_connected():
            connected.get(timeout=10)
        response = client.post("/v1/lines/tiny/frames", content=colour_frame("green"),
                               headers=frame_headers("mqtt-1"))
        message = received.get(timeout=10)
    finally:
        listener.loop_stop()
        listener.disconnect()
    assert message.topic == "scrapvision-test/lines/tiny/decisions"
    published = json.loads(message.payload)
    assert published == response.json()
    assert published["frame_id"] == "mqtt-1" and published["class_name"] == "green"
