"""The probe that names physical flicker (unflicker.kinds) on flicker made with unflicker.synth."""

import numpy as np
import pytest
import skimage.data

from unflicker import synth
from unflicker.errors import InputError
from unflicker.kinds import KindConfig, KindProbe, unmistakable


def probed(source: np.ndarray, kind: str, seed: int) -> KindProbe:
    # A perfect deflicker: the projected frames are the clean clip, so the probe sees the flicker alone.
    clean = synth.camera_move_clip(source, 48, (96, 144), "pan", seed=1)
    flickering = np.clip(synth.add_flicker(clean, kind, 1.0, seed=seed), 0, 1)
    probe = KindProbe()
    for t in range(len(clean)):
        probe.observe(flickering[t], clean[t])
    return probe


def named(source: np.ndarray, kind: str, seed: int) -> str:
    return probed(source, kind, seed).kind()


@pytest.mark.parametrize("kind, expected", [("film", "film"), ("mains", "mains"), ("global", "timelapse"),
                                            ("colour", "timelapse"), ("step", "timelapse"), ("local", "timelapse")])
def test_each_physical_kind_is_named(kind, expected):
    colour = skimage.data.astronaut().astype(np.float32) / 255
    assert [named(colour, kind, seed) for seed in (0, 1)] == [expected] * 2


def test_a_black_and_white_picture_with_grey_flicker_is_taken_for_film():
    grey = np.repeat(skimage.data.camera()[..., None], 3, 2).astype(np.float32) / 255
    assert named(grey, "global", 0) == "film"  # the prior: time-lapses and lamp-lit scenes are in colour
    assert named(grey, "colour", 0) == "timelapse"  # a flicker in colour is no black-and-white film's


def test_only_film_in_black_and_white_that_pumps_and_strong_mains_are_unmistakable():
    """What the run summary takes for physical flicker beyond doubt (no --kind processed hint): film's pumping
    in a black-and-white picture flickering grey (old film), and mains bands. Film in a colour picture, as a
    colorization was named, a grey picture's flicker that does not pump, and timelapse stay doubtful."""
    colour = skimage.data.astronaut().astype(np.float32) / 255
    grey = np.repeat(skimage.data.camera()[..., None], 3, 2).astype(np.float32) / 255
    cases = [(grey, "film", "film", True), (grey, "mains", "mains", True), (colour, "mains", "mains", True),
             (colour, "film", "film", False), (grey, "local", "film", False), (grey, "step", "timelapse", False),
             (colour, "global", "timelapse", False)]
    for source, kind, name, clear in cases:
        probe = probed(source, kind, 0)
        assert (probe.kind(), unmistakable(probe.features())) == (name, clear), kind
    assert not unmistakable(None) and not unmistakable({})


def test_too_few_frames_name_nothing_and_bad_settings_are_refused():
    probe = KindProbe()
    frame = np.full((32, 32, 3), 0.5, np.float32)
    probe.observe(frame, frame)
    assert probe.kind() is None and probe.features() is None
    with pytest.raises(InputError):
        KindProbe(KindConfig(jumps=0.0))
