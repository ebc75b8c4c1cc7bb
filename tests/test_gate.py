"""The gate of the networks' fine correction (unflicker.gate) and --kind."""

import math

import cv2
import numpy as np
import pytest

from unflicker import synth
from unflicker.errors import InputError
from unflicker.gate import FineGate, GateConfig


@pytest.fixture(scope="module")
def moving_clip():
    rng = np.random.default_rng(5)
    photo = cv2.GaussianBlur(rng.random((220, 300, 3)).astype(np.float32), (0, 0), 2.0)
    photo = (photo - photo.min()) / (photo.max() - photo.min())
    return synth.camera_move_clip(photo, 12, (90, 120), motion="pan", seed=2)


def _texture_flicker(clip, seed):
    """Per-frame random texture (a process with random settings per frame): not smooth in space."""
    rng = np.random.default_rng(seed)
    out = []
    for frame in clip:
        noise = cv2.GaussianBlur(rng.normal(0, 1, frame.shape).astype(np.float32), (0, 0), 1.0)
        out.append(np.clip(frame + 0.06 * noise, 0, 1))
    return out


def _share_and_weight(inputs, projected, refined, config=None):
    gate = FineGate(config)
    for frame, p, o in zip(inputs, projected, refined):
        gate.observe(frame, p, o)
    return gate.share, gate.weight()


def test_refined_frames_that_remove_texture_flicker_are_taken(moving_clip):
    processed = _texture_flicker(moving_clip, 1)
    # The projection cannot express texture: its frames keep the flicker; the refined ones are consistent.
    share, weight = _share_and_weight(processed, processed, moving_clip)
    assert share > 0.5 and weight == 1.0


def test_refined_frames_that_only_differ_by_flaws_are_not_taken(moving_clip):
    rng = np.random.default_rng(2)
    # The atlas's flaws: a wrong-coloured patch and some softening, steady over the segment.
    refined = []
    for frame in moving_clip:
        flawed = cv2.GaussianBlur(frame, (0, 0), 1.0)
        flawed[20:50, 30:70] = np.clip(flawed[20:50, 30:70] + rng.normal(0, 0.01, 3).astype(np.float32) + 0.1, 0, 1)
        refined.append(flawed)
    share, weight = _share_and_weight(moving_clip, moving_clip, refined)
    assert share < GateConfig().low and weight == 0.0


def _strength(inputs, projected, config=None):
    gate = FineGate(config)
    for frame, p in zip(inputs, projected):
        gate.observe(frame, p, p)
    return gate.input_share, gate.efficiency, gate.strength()


def test_a_correction_that_changes_much_and_removes_little_is_left_out(moving_clip):
    rng = np.random.default_rng(7)
    jitter = [np.clip(f * np.float32(1 + 0.02 * rng.normal()), 0, 1) for f in moving_clip]  # a camera's exposure jitter
    flicker = [np.clip(f * np.float32(1 + 0.08 * rng.normal()), 0, 1) for f in moving_clip]
    shift = np.float32([0.08, -0.06, 0.07])  # the atlas's flaw: a steady colour cast, consistent over time
    flawed = [np.clip(f + shift, 0, 1) for f in moving_clip]
    g, r, strength = _strength(jitter, flawed)  # removes the jitter but changes every pixel by far more
    assert g > GateConfig().clean_high and r < GateConfig().efficient_low and strength == 0.0
    g, r, strength = _strength(jitter, moving_clip)  # the jitter removed and nothing else: efficient
    assert g > GateConfig().clean_high and r > GateConfig().efficient_high and strength == 1.0
    g, r, strength = _strength(flicker, flawed)  # real flicker removed, with the same flaw
    assert r > GateConfig().efficient_high and strength == 1.0
    assert _strength(jitter, flawed, GateConfig(efficient_low=0.0, efficient_high=1e-12))[2] == 1.0
    assert _strength(moving_clip[:1], moving_clip[:1])[1] is None  # one frame: nothing measured
    for low, high in ((0.1, 0.05), (0.05, math.inf), (-0.1, 0.05)):
        with pytest.raises(InputError):
            GateConfig(efficient_low=low, efficient_high=high).check()


def test_a_fixed_weight_overrides_the_measurement_and_bad_settings_are_refused(moving_clip):
    processed = _texture_flicker(moving_clip, 3)
    assert _share_and_weight(processed, processed, moving_clip, GateConfig(weight=0.0))[1] == 0.0
    assert _share_and_weight(moving_clip[:1], moving_clip[:1], moving_clip[:1])[1] == 0.0  # one frame: nothing measured
    for bad in (dict(low=0.5, high=0.2), dict(weight=1.5), dict(side=4), dict(smooth_low=0.5, smooth_high=0.4),
                dict(smooth_blur=-0.1)):
        with pytest.raises(InputError):
            GateConfig(**bad).check()


def test_flicker_the_smooth_model_removes_well_takes_the_remainder_low_passed(moving_clip):
    # Global flicker the projection removes (its frames are the clean clip): g_in is high, the
    # remainder is taken low-passed. Texture flicker it cannot remove: g_in low, pixel by pixel.
    flickering = synth.add_flicker(np.stack(moving_clip), "global", 1.0, seed=3)
    smooth = FineGate()
    texture = FineGate()
    fixed = FineGate(GateConfig(weight=0.0))
    processed = _texture_flicker(moving_clip, 4)
    for t in range(len(moving_clip)):
        smooth.observe(flickering[t], moving_clip[t], moving_clip[t])
        fixed.observe(flickering[t], moving_clip[t], moving_clip[t])
        texture.observe(processed[t], processed[t], moving_clip[t])
    assert smooth.input_share > GateConfig().smooth_high and smooth.smoothness() == 1.0
    assert texture.input_share < GateConfig().smooth_low and texture.smoothness() == 0.0
    assert fixed.smoothness() == 0.0  # with a fixed weight the kind sets the projection's own low pass


def _identity_correction():
    from unflicker.projection import FlickerCorrection, ProjectionConfig

    cfg = ProjectionConfig()
    return FlickerCorrection(np.ones((3, *cfg.grid), np.float32), np.zeros((3, cfg.rows), np.float32),
                             np.zeros((3, cfg.tone_knots), np.float32))


def test_a_remainder_whose_fine_part_adds_no_consistency_is_taken_low_passed(moving_clip):
    # The model is the identity, so the projected frame's remainder is P - I. Where it removes a
    # per-frame texture (P is the clean clip), its fine part adds consistency: f > 0, kept pixel by
    # pixel. Where it only adds per-frame fine changes (the networks' softening varies), f < 0: low-passed.
    config = GateConfig(fine_side=120, fine_every=1, smooth_blur=0.03)
    identity = _identity_correction()
    assert np.allclose(identity.apply(moving_clip[0]), np.clip(moving_clip[0], 0, 1), atol=1e-6)
    processed = _texture_flicker(moving_clip, 6)
    removing, adding, off = FineGate(config), FineGate(config), FineGate(GateConfig(fine_side=0, smooth_blur=0.03))
    for t in range(len(moving_clip)):
        removing.observe(processed[t], moving_clip[t], moving_clip[t], identity)
        adding.observe(moving_clip[t], processed[t], processed[t], identity)
        off.observe(processed[t], moving_clip[t], moving_clip[t], identity)
    assert removing.fine_share > config.fine_high and removing.remainder_smoothness() == removing.smoothness()
    assert adding.fine_share < config.fine_low and adding.remainder_smoothness() == 1.0
    assert off.fine_share is None and off.remainder_smoothness() == off.smoothness()
    with pytest.raises(InputError):
        GateConfig(fine_low=0.1, fine_high=0.05).check()


def test_kind_sets_the_gate_the_anchor_and_the_projection():
    from unflicker.config import RunConfig, method_spec

    spec = lambda kind: method_spec(RunConfig(method="neural", kind=kind)).config  # noqa: E731
    assert spec("auto").gate.weight is None and spec("processed").gate.weight == 1.0
    assert spec("mains").gate.weight == 0.0 and spec("timelapse").anchor is not None
    assert spec("film").gate.weight == 0.0 and spec("film").anchor is None
    assert method_spec(RunConfig(method="neural", kind="film", keep_slow=2.0)).config.anchor.sigma == 2.0
    # Physical flicker is smooth: only a low-passed remainder of the networks' correction is kept.
    assert all(spec(kind).projection.residual_blur == GateConfig().smooth_blur > 0 for kind in ("film", "timelapse", "mains"))
    assert spec("auto").projection.residual_blur == spec("processed").projection.residual_blur == 0
    with pytest.raises(InputError, match="unknown kind"):
        RunConfig(kind="sunset").check()
    with pytest.raises(InputError, match="--kind"):
        RunConfig(method="classical", kind="processed").check()


def test_processed_kind_takes_the_refined_frames_and_the_summary_says_so(tmp_path, moving_clip):
    from unflicker import io
    from unflicker.config import EngineConfig
    from unflicker.pipeline import RunConfig, deflicker_file

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(_texture_flicker(moving_clip, 4)):
        cv2.imwrite(str(folder / f"f{i:03d}.png"), cv2.cvtColor(io.from_float(frame), cv2.COLOR_RGB2BGR))

    def run(name, **options):
        config = RunConfig(method="neural", atlas_steps=20, keep_slow=math.inf, progress=False,
                           engine=EngineConfig(workers=1), **options)
        summary = deflicker_file(folder, tmp_path / name, config)
        return summary, np.stack([io.to_float(f.image) for f in io.read_frames(tmp_path / name)])

    processed, taken = run("processed", kind="processed")
    _, refined = run("refined", projection=False)
    _, projected = run("projected", kind="timelapse")
    assert np.abs(taken - refined).max() <= 1.5 / 255  # P + 1 (O - P) = O, up to rounding
    assert np.abs(projected - refined).mean() > 4 * np.abs(taken - refined).mean()
    assert processed.kind == "processed" and "kind processed" in processed.line()
    auto, _ = run("auto")
    (info,) = auto.segment_info
    assert 0.0 <= info["fine_weight"] <= 1.0 and info["fine_share"] is not None
    # 20 atlas steps on 12 tiny frames: whatever the measurement finds, the summary says it.
    assert auto.kind == ("none" if info["strength"] == 0 else "processed" if info["fine_weight"] >= 0.5
                         else info["flicker_kind"])
    assert info["flicker_kind"] in ("film", "timelapse", "mains")
    assert auto.config["kind"] == "auto"


def test_the_summary_names_what_the_segments_found():
    from pathlib import Path

    from unflicker.pipeline import RunSummary

    def summary(kind, *infos):
        return RunSummary(Path("out.mp4"), 10, 1.0, 0.01, 0.001, len(infos), config={"kind": kind},
                          segment_info=infos)

    clean = summary("auto", {"fine_weight": 0.0, "strength": 0.0})
    assert clean.kind == "none" and "left as it is" in clean.line()
    assert summary("auto", {"fine_weight": 1.0, "strength": 1.0}, {"fine_weight": 0.0, "strength": 1.0}).kind == "mixed"
    assert summary("auto", {"fine_weight": 0.9, "strength": 1.0}, {"fine_weight": 0.0, "strength": 0.0}).kind == "processed"
    assert summary("auto", {"fine_weight": 0.2, "strength": 0.5}).kind == "physical"  # a segment that did not say
    film = summary("auto", *({"fine_weight": 0.0, "strength": 1.0, "flicker_kind": k} for k in ("film", "mains", "film")))
    assert film.kind == "film" and "kind film (found, treated as physical flicker" in film.line()
    assert "try --kind processed" in film.line()  # what the user can do where the gate was wrong
    # Old film (a black-and-white picture, grey flicker that pumps; real/old-film-003's numbers) gets no such
    # hint: it is what no clip processed frame by frame showed. A colour picture named film (goat's colorization's
    # numbers) and timelapse (real/winter-scenes-in-holland's, also what processed clips get) keep it.
    numbers = {"old film": (0.82, 0.70, 0.04, 0.83, 0.0043), "goat": (0.83, 0.81, 1.29, 0.80, 0.0817),
               "winter": (0.84, 0.93, 0.00, 0.48, 0.0)}
    hinted = {}
    for name, values in numbers.items():
        features = dict(zip(("kind_pumping", "kind_jumps", "kind_colour", "kind_bands", "kind_chroma"), values))
        line = summary("auto", {"fine_weight": 0.1, "strength": 1.0, "flicker_kind": "film" if name != "winter" else
                                "timelapse", **features}, {"fine_weight": 0.0, "strength": 0.0}).line()
        assert "(found, treated as physical flicker; " in line
        hinted[name] = "try --kind processed" in line
    assert hinted == {"old film": False, "goat": True, "winter": True}
    assert "found" not in summary("film", {"fine_weight": 0.0, "strength": 1.0}).line()
    assert summary("film", {"fine_weight": 0.0, "strength": 1.0}).kind == "film"
    assert summary("auto").kind is None and "kind" not in summary("auto").line()


def test_apply_computes_the_written_out_blends_bit_for_bit_and_leaves_its_inputs_alone():
    """FineGate.apply works in place on arrays of its own: every combination of its shares gives
    the plain formula's bits, the caller's frames are unchanged, and the projected frame itself
    comes back when nothing changes it."""
    import itertools

    from unflicker.projection import low_pass

    rng = np.random.default_rng(0)
    blur = 0.02
    for remainder, weight, smooth, strength in itertools.product([0.0, 0.4, 1.0], [0.0, 0.6], [0.0, 0.5], [1.0, 0.7]):
        frame, projected, model, refined = (rng.random((30, 40, 3), dtype=np.float32) * 1.1 - 0.05 for _ in range(4))
        kept = [a.copy() for a in (frame, projected, model, refined)]
        expected = projected
        if remainder > 0:
            smoothed = model + low_pass(expected - model, blur)
            expected = expected + np.float32(remainder) * (np.clip(smoothed, 0.0, 1.0) - expected)
        if weight > 0:
            taken = refined - expected
            if smooth > 0:
                taken += np.float32(smooth) * (low_pass(taken, blur) - taken)
            expected = expected + np.float32(weight) * taken
        if strength < 1:
            expected = frame + np.float32(strength) * (expected - frame)
        gate = FineGate(GateConfig(smooth_blur=blur))
        gate.remainder_smoothness, gate.weight = (lambda: remainder), (lambda: weight)
        gate.smoothness, gate.strength = (lambda: smooth), (lambda: strength)
        out = gate.apply(frame, projected, model, refined)
        assert np.array_equal(out, expected)
        assert (out is projected) == (expected is projected)
        assert all(np.array_equal(a, b) for a, b in zip((frame, projected, model, refined), kept))
