"""A recording's frames run on its own clock and crop order, so a video gives the same keypoints
whatever the machine's load: the media time a video file stamps, and the crop a stage picks."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgepose.crop import CropRegionTracker
from edgepose.geometry import letterbox_box
from edgepose.inference.stage import RECORDING_CROP_WAIT_S, SharedCrop
from edgepose.sources.base import Frame
from edgepose.sources.opencv import VideoFileSource
from tests.conftest import write_video

HEIGHT_PX, WIDTH_PX = 480, 640


def _frame(index: int, recording: bool) -> Frame:
    image = np.zeros((HEIGHT_PX, WIDTH_PX, 3), np.uint8)
    return Frame(image, 1000.0 + index, 50.0 + index, index, media_time_s=index / 30 if recording else None)


def _person_at(x: float) -> np.ndarray:
    """(17, 3) y, x, score: a confident upright person centred on normalized x."""
    keypoints = np.zeros((17, 3))
    keypoints[:, 0] = np.linspace(0.2, 0.8, 17)
    keypoints[:, 1] = x + np.linspace(-0.05, 0.05, 17)
    keypoints[:, 2] = 0.9
    return keypoints


def test_a_video_file_stamps_its_own_media_time_across_loops(tmp_path: Path) -> None:
    frames = [np.full((48, 64, 3), value, np.uint8) for value in (10, 20, 30)]
    source = VideoFileSource(write_video(tmp_path / "three.avi", frames, fps=15.0), loop=True)
    source.open()
    try:
        read = [source.read() for _ in range(7)]
    finally:
        source.close()
    media = [frame.media_time_s for frame in read if frame is not None]
    assert media == pytest.approx([index / 15 for index in range(7)])
    assert all(frame is not None and frame.scene_time_s == frame.media_time_s for frame in read)


def test_a_live_frame_runs_on_its_monotonic_capture_time() -> None:
    frame = _frame(3, recording=False)
    assert frame.media_time_s is None and frame.scene_time_s == frame.monotonic_s


def test_a_recording_frame_is_cropped_from_two_frames_back_even_when_a_newer_one_finished() -> None:
    crop = SharedCrop(CropRegionTracker())
    letterbox = letterbox_box(HEIGHT_PX, WIDTH_PX)
    assert crop.box_for(_frame(0, recording=True)) == letterbox
    crop.update(_person_at(0.3), _frame(0, recording=True))
    assert crop.box_for(_frame(1, recording=True)) == letterbox  # frame 0 was in flight in the daemon
    after_0 = crop.box_for(_frame(2, recording=True))
    assert after_0 != letterbox
    crop.update(_person_at(0.7), _frame(1, recording=True))
    # Frame 1 finished before frame 2 was prepared: a recording still crops frame 2 from frame 0,
    # as it would have on a machine where it had not; a live frame takes the newest box.
    assert crop.box_for(_frame(2, recording=True)) == after_0
    after_1 = crop.box_for(_frame(2, recording=False))
    assert after_1 != after_0
    assert crop.newest_box(_frame(2, recording=True)) == after_1


def test_a_recording_frame_waits_for_the_frame_its_crop_comes_from() -> None:
    crop = SharedCrop(CropRegionTracker())
    crop.update(_person_at(0.3), _frame(0, recording=True))
    finished = threading.Event()

    def finish_frame_1_late() -> None:
        time.sleep(0.05)
        crop.update(_person_at(0.7), _frame(1, recording=True))
        finished.set()

    worker = threading.Thread(target=finish_frame_1_late)
    worker.start()
    box = crop.box_for(_frame(3, recording=True))
    worker.join()
    assert finished.is_set()
    assert box == crop.box_for(_frame(2, recording=False))  # the box frame 1 made


def test_a_recording_frame_whose_source_frame_never_finishes_goes_on_with_the_newest_box() -> None:
    crop = SharedCrop(CropRegionTracker())
    crop.update(_person_at(0.3), _frame(0, recording=True))
    started = time.monotonic()
    box = crop.box_for(_frame(5, recording=True))  # frame 3 failed: it will never finish
    assert time.monotonic() - started >= RECORDING_CROP_WAIT_S * 0.9
    assert box == crop.box_for(_frame(1, recording=False))
