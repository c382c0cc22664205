"""Both keypoints formats decode into the same Pose objects; bad messages get one clear PayloadError."""

from __future__ import annotations

import json

import pytest

from edgepose.fleet.replay import photo_poses
from edgepose.mqtt.decode import PayloadError, decode_keypoints
from edgepose.mqtt.payloads import PayloadFormat, keypoints_bytes
from edgepose.pose import KEYPOINT_NAMES, BoundingBox, Pose
from tests.test_payloads import _message, _pose

# The quantisation steps of each format: json rounds coordinates to 4 decimals and scores to 3;
# compact stores thousandths and hundredths.
COORD_TOLERANCE = 0.0005 + 1e-9
SCORE_TOLERANCE = 0.005 + 1e-9


def assert_same_poses(a: tuple[Pose, ...], b: tuple[Pose, ...]) -> None:
    assert len(a) == len(b)
    for pa, pb in zip(a, b, strict=True):
        assert pa.track_id == pb.track_id
        assert abs(pa.score - pb.score) <= SCORE_TOLERANCE
        assert [k.name for k in pa.keypoints] == [k.name for k in pb.keypoints] == list(KEYPOINT_NAMES)
        for ka, kb in zip(pa.keypoints, pb.keypoints, strict=True):
            assert abs(ka.x - kb.x) <= COORD_TOLERANCE and abs(ka.y - kb.y) <= COORD_TOLERANCE
            assert abs(ka.score - kb.score) <= SCORE_TOLERANCE
        assert (pa.bbox is None) == (pb.bbox is None)
        if isinstance(pa.bbox, BoundingBox) and isinstance(pb.bbox, BoundingBox):
            assert abs(pa.bbox.xmax - pb.bbox.xmax) <= COORD_TOLERANCE


@pytest.mark.parametrize("poses", [tuple(photo_poses()), (_pose(0.7, track_id=3), _pose(0.4, track_id=5)), ()])
def test_compact_and_json_decode_to_the_same_poses(poses: tuple[Pose, ...]) -> None:
    message = _message(poses=poses)
    from_json = decode_keypoints("pi-lab", keypoints_bytes(message, PayloadFormat.JSON))
    from_compact = decode_keypoints("pi-lab", keypoints_bytes(message, PayloadFormat.COMPACT))
    assert from_json.payload_format is PayloadFormat.JSON and from_compact.payload_format is PayloadFormat.COMPACT
    for frame in (from_json, from_compact):
        assert (frame.device_id, frame.seq, frame.timestamp_s) == ("pi-lab", 42, 1764000000.123)
        assert (frame.frame_width_px, frame.frame_height_px) == (640, 480)
    assert_same_poses(from_json.poses, from_compact.poses)
    assert_same_poses(from_json.poses, poses)  # and both match what the daemon had
    assert from_json.model == "movenet_lightning_int8" and from_compact.model is None
    assert from_compact.size_bytes < from_json.size_bytes


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "unknown keypoints schema None"),
        (b'{"schema": "edgepose.keypoints/9"}', "unknown keypoints schema 'edgepose.keypoints/9'"),
        (b'{"schema": "edgepose.kpc/1", "seq": 1, "ts": 1.0, "frame": [640, 480], "poses": [[1, 2]]}', "poses[0]"),
        (b'{"schema": "edgepose.kpc/1", "seq": -1, "ts": 1.0, "frame": [640, 480], "poses": []}', "seq"),
    ],
)
def test_bad_messages_raise_one_clear_error(payload: bytes, expected: str) -> None:
    with pytest.raises(PayloadError) as caught:
        decode_keypoints("cam-7", payload)
    assert str(caught.value).startswith("cam-7: ")
    assert expected in str(caught.value)


def test_json_schema_violation_is_named() -> None:
    payload = json.loads(keypoints_bytes(_message(), PayloadFormat.JSON))
    payload["poses"][0]["keypoints"][2]["name"] = "snout"
    with pytest.raises(PayloadError, match=r"edgepose.keypoints/1: .*keypoints\[2\]\.name"):
        decode_keypoints("cam-7", json.dumps(payload).encode())


def test_without_validation_malformed_is_still_one_error() -> None:
    bad = b'{"schema": "edgepose.kpc/1", "seq": 1, "ts": 1.0, "frame": [640, 480], "poses": [[1, 2]]}'
    with pytest.raises(PayloadError, match="malformed"):
        decode_keypoints("cam-7", bad, validate=False)


def test_json_decoding_keeps_every_box_edge_model_and_backend() -> None:
    pose = Pose(_pose(0.6).keypoints, 0.6, 4, BoundingBox(xmin=0.11, ymin=0.22, xmax=0.33, ymax=0.44))
    frame = decode_keypoints("pi", keypoints_bytes(_message(poses=(pose,)), PayloadFormat.JSON))
    assert frame.poses[0].bbox == BoundingBox(xmin=0.11, ymin=0.22, xmax=0.33, ymax=0.44)
    assert (frame.model, frame.backend) == ("movenet_lightning_int8", "cpu")


def test_unknown_schema_lists_the_known_ones() -> None:
    with pytest.raises(PayloadError) as caught:
        decode_keypoints("pi", b'{"schema": "other/1"}')
    assert str(caught.value) == "pi: unknown keypoints schema 'other/1' (known: edgepose.keypoints/1, edgepose.kpc/1)"


def test_compact_ids_or_boxes_of_another_length_are_malformed() -> None:
    payload = json.loads(
        keypoints_bytes(_message(poses=(_pose(0.7, track_id=3), _pose(0.4, track_id=5))), PayloadFormat.COMPACT)
    )
    payload["ids"] = [3]  # one id for two poses
    with pytest.raises(PayloadError) as caught:
        decode_keypoints("pi", json.dumps(payload).encode(), validate=False)
    assert str(caught.value).startswith("pi: edgepose.kpc/1: malformed message (ValueError: zip()")
