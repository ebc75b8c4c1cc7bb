"""The texture carry (--carry-texture): fresh texture made to agree along the motion, its amount kept,
nothing carried across a mismatch, off where the gate says so, the same bits on one lane or two."""

import cv2
import numpy as np
import pytest

from unflicker.carry import CarryConfig, DetailCarry
from unflicker.errors import InputError


def scene(shape=(270, 360), seed=0):
    """A smooth image with some structure (the flow has something to hold on to)."""
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.random((*shape, 3)).astype(np.float32), (0, 0), 4)
    return 0.2 + 0.6 * (image - image.min()) / (image.max() - image.min())


def fine(frame, sigma=CarryConfig().band):
    """The finest band of detail as the carry sees it."""
    return frame - cv2.GaussianBlur(frame, (0, 0), sigma * min(frame.shape[:2]), borderType=cv2.BORDER_REFLECT)


def laplacian_energy(frame):
    return float(np.square(cv2.Laplacian(frame, cv2.CV_32F)).mean())


def run(carry, frames, inputs=None):
    inputs = frames if inputs is None else inputs
    return [carry.apply(frames[t], carry.motion(inputs[t - 1], inputs[t]) if t else None) for t in range(len(frames))]


def shifted(image, dx):
    return cv2.warpAffine(image, np.float32([[1, 0, dx], [0, 1, 0]]), image.shape[1::-1], flags=cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_REFLECT)


def test_fresh_texture_each_frame_is_made_to_agree_and_keeps_its_amount():
    """img2img-like flicker: the same scene panning 1 pixel a frame, each frame with texture drawn afresh."""
    rng = np.random.default_rng(1)
    base = scene(seed=1)
    frames = [np.clip(shifted(base, t) + 0.04 * rng.standard_normal(base.shape).astype(np.float32), 0, 1)
              for t in range(10)]
    carry = DetailCarry()
    out = run(carry, frames)
    assert np.array_equal(out[0], frames[0])  # the recursion starts with the frame as it is
    assert carry.efficiency > CarryConfig().efficient_high and carry.amount() == 1.0  # flicker removed: all taken

    def jumps(seq):  # how much the finest detail changes from a frame to the next, along the pan
        return np.mean([np.abs(fine(seq[t])[8:-8, 9:-8] - fine(seq[t - 1])[8:-8, 8:-9]).mean()
                        for t in range(5, len(seq))])

    assert jumps(out) < 0.6 * jumps(frames)  # the texture follows the motion instead of jumping
    before = np.mean([laplacian_energy(f) for f in frames[5:]])
    after = np.mean([laplacian_energy(f) for f in out[5:]])
    assert 0.85 < after / before < 1.15  # as sharp as before: not averaged into a blur


def test_steady_texture_is_left_almost_as_it_is():
    """Detail that already agrees along the motion (a clean pan) is carried onto itself."""
    base = scene(seed=2)
    texture = base + 0.05 * np.sin(np.arange(base.shape[1], dtype=np.float32) / 1.3)[None, :, None]
    frames = [np.clip(shifted(texture, 0.5 * t), 0, 1) for t in range(8)]
    carry = DetailCarry()
    out = run(carry, frames)
    for t in range(1, 8):
        assert np.abs(out[t] - frames[t])[6:-6, 6:-6].mean() < 0.006
    assert carry.amount() == 0.0  # the change bought no consistency: the segment keeps its own detail
    carry.reset()
    assert carry.efficiency is None and carry.amount() == 0.0


def test_a_partial_share_keeps_the_amount_of_detail():
    """Half of one detail pattern and half of an unrelated one: the mix is brought back to the frame's energy."""
    rng = np.random.default_rng(8)
    base = scene(seed=8)
    own, other = (np.clip(base + 0.04 * rng.standard_normal(base.shape).astype(np.float32), 0, 1) for _ in range(2))
    carry = DetailCarry()
    assert carry.blend(own, other, 0.0) is own and carry.blend(own, other, 1.0) is other
    half = carry.blend(own, other, 0.5)
    plain = own + 0.5 * (other - own)
    assert laplacian_energy(plain) < 0.7 * laplacian_energy(own)  # what a linear blend loses
    assert 0.9 < laplacian_energy(half) / laplacian_energy(own) < 1.1
    assert np.abs(cv2.GaussianBlur(half - plain, (0, 0), 3)).mean() < 0.002  # only the finest band differs


def test_only_fresh_detail_is_carried():
    rng = np.random.default_rng(9)
    band = 0.04 * rng.standard_normal((90, 120, 3)).astype(np.float32)
    other = 0.04 * rng.standard_normal((90, 120, 3)).astype(np.float32)
    carry = DetailCarry()
    assert carry._freshness(band, band, 3.0).max() == 0.0  # steady: nothing carried
    assert carry._freshness(band, other, 3.0).mean() > 0.9  # drawn afresh: carried
    assert carry._freshness(band, 0.8 * band, 3.0).max() == 0.0  # only its amount changed: the anchor's job


def test_nothing_is_carried_across_a_mismatch():
    """A cut-like change inside a segment: the base no longer matches, the new frame stays its own."""
    rng = np.random.default_rng(3)
    first = np.clip(scene(seed=3) + 0.04 * rng.standard_normal((270, 360, 3)).astype(np.float32), 0, 1)
    second = np.clip(scene(seed=4) + 0.04 * rng.standard_normal((270, 360, 3)).astype(np.float32), 0, 1)
    carry = DetailCarry()
    carry.apply(first, None)
    out = carry.apply(second, carry.motion(first, second))
    assert np.abs(out - second).mean() < 0.1 * np.abs(first - second).mean()


def test_off_and_segment_amounts():
    frames = [scene(seed=5)] * 3
    off = DetailCarry(CarryConfig.off())
    assert all(o is f for o, f in zip(run(off, frames), frames))
    config = CarryConfig()
    assert not config.for_segment(smoothness=1.0).on  # smooth light: its detail does not flicker
    assert not config.for_segment(smoothness=0.0, strength=0.0).on  # a segment left as it is
    assert config.for_segment(0.5, 0.5).amount == pytest.approx(0.25)
    assert config.for_segment(0.0, 1.0) is config


@pytest.mark.parametrize("bad", [dict(factor=1.5), dict(amount=-0.1), dict(band=0.0), dict(tolerance=0.0),
                                 dict(gain_limit=0.5), dict(flow_preset="slow"), dict(flow_side=8)])
def test_bad_settings_are_refused(bad):
    with pytest.raises(InputError):
        DetailCarry(CarryConfig(**bad))


def test_the_carry_and_the_refinement_take_the_flow_modules_presets():
    from unflicker import flow
    from unflicker.refine import inference, training
    from unflicker.refine.network import RefineNet, RefineNetConfig

    assert inference.FLOW_PRESETS is training.FLOW_PRESETS is flow.FLOW_PRESETS  # one list, no copies
    assert set(flow.FLOW_PRESETS) == set(flow._PRESETS)
    net = RefineNet(RefineNetConfig(width=4))
    for preset in flow.FLOW_PRESETS:  # every preset DIS knows is accepted by each ...
        CarryConfig(flow_preset=preset).check()
        training._check(training.RefineTrainConfig(inference=inference.RefineInferenceConfig(flow_preset=preset)))
    for refused in ("slow", "Fast", ""):  # ... and the same unknown ones refused by each
        with pytest.raises(InputError, match="flow preset"):
            CarryConfig(flow_preset=refused).check()
        with pytest.raises(InputError, match="flow preset"):
            inference.LocalRefiner(net, inference.RefineInferenceConfig(flow_preset=refused), device="cpu")
        with pytest.raises(InputError, match="flow preset"):
            training._check(training.RefineTrainConfig(inference=inference.RefineInferenceConfig(flow_preset=refused)))


def test_the_three_warps_of_a_frame_share_one_set_of_maps(monkeypatch):
    import unflicker.carry as carry_module

    frames = [shifted(scene((60, 80), seed=2), t) for t in range(3)]
    built = []
    made = carry_module.remap_maps
    monkeypatch.setattr(carry_module, "remap_maps", lambda flow: built.append(1) or made(flow))
    run(DetailCarry(), frames)
    assert len(built) == 2  # frames 1 and 2 (its base, own band and carried band warped along them), once each


def test_flows_on_a_smaller_copy_come_back_at_the_frames_size():
    frames = [shifted(scene((200, 260), seed=6), t) for t in range(2)]
    flow, valid = DetailCarry(CarryConfig(flow_side=100)).motion(*frames)
    assert flow.shape == (200, 260, 2) and valid.shape == (200, 260)
    inner = valid[20:-20, 20:-20] > 0
    assert inner.mean() > 0.8 and abs(float(np.median(flow[20:-20, 20:-20, 0][inner])) + 1) < 0.3  # t -> t-1: 1 px left


def test_a_run_carries_texture_where_asked_with_the_same_bits_on_one_lane_or_two(tmp_path):
    from unflicker import io, synth
    from unflicker.config import EngineConfig
    from unflicker.pipeline import RunConfig, deflicker_file
    from unflicker.segments import SegmentConfig

    rng = np.random.default_rng(7)
    clean = synth.camera_move_clip(scene((160, 220), seed=7), 16, (135, 180), motion="pan", seed=7)
    noisy = np.clip(clean + 0.04 * rng.standard_normal(clean.shape).astype(np.float32), 0, 1)  # fresh texture
    folder = tmp_path / "clip"
    folder.mkdir()
    for i, frame in enumerate(noisy):
        cv2.imwrite(str(folder / f"f{i:04d}.png"), cv2.cvtColor(io.from_float(frame), cv2.COLOR_RGB2BGR))
    outputs = []
    for lanes, carry in ((1, True), (2, True), (2, False)):
        out = tmp_path / f"lanes{lanes}{carry}.mkv"
        config = RunConfig(method="neural", atlas_steps=5, progress=False, kind="processed", carry_texture=carry,
                           segments=SegmentConfig(frames=12, margin=3), engine=EngineConfig(workers=1, lanes=lanes))
        summary = deflicker_file(folder, out, config)
        assert summary.segments == 2
        outputs.append(np.stack([f.image for f in io.read_frames(out)]))
        if carry:
            assert all(info["carry"] > 0.5 for info in summary.segment_info)  # fresh texture: mostly carried
            assert "texture carried " in summary.line()
        else:
            assert all("carry" not in info for info in summary.segment_info)
            assert "texture carried" not in summary.line()
    assert np.array_equal(outputs[0], outputs[1])
    assert not np.array_equal(outputs[1], outputs[2])
    # along the clean clip's motion, the carried output agrees better from frame to frame than the uncarried one
    from unflicker.metrics import warp_error

    e_carried, e_own = (warp_error(io.to_float(o), clean) for o in outputs[1:])
    assert e_carried < 0.9 * e_own, (e_carried, e_own)


def test_which_runs_carry_texture():
    from unflicker.carry import CarryConfig
    from unflicker.config import RunConfig, method_spec

    def carry(**kw):
        return method_spec(RunConfig(method="neural", **kw)).config.carry

    # never unasked: sensor noise and film grain are fresh texture too
    assert all(carry(kind=k) is None for k in ("auto", "processed", "film", "timelapse", "mains"))
    assert all(carry(kind=k, carry_texture=True) == CarryConfig() for k in ("auto", "processed", "film"))


def test_carry_texture_is_the_neural_methods_and_recorded(tmp_path, capsys):
    from unflicker.cli import main

    frames = tmp_path / "clip"
    frames.mkdir()
    for i in range(3):
        cv2.imwrite(str(frames / f"f{i}.png"), np.full((40, 40, 3), 100 + i, np.uint8))
    assert main(["run", str(frames), "-o", str(tmp_path / "out.mkv"), "--method", "classical", "--carry-texture"]) != 0
    assert "--carry-texture" in capsys.readouterr().err and not (tmp_path / "out.mkv").exists()


def test_the_summary_says_how_much_was_carried_without_a_gate_too():
    """--no-projection runs no gate (no kind in the summary), but the carry still runs: the line says how much."""
    from pathlib import Path

    from unflicker.pipeline import RunSummary

    def line(carry, *infos):
        config = {"kind": "auto", "neural": {"carry": carry, "projection": None, "gate": None}}
        return RunSummary(Path("out.mkv"), 16, 1.0, 0.03, 0.001, len(infos), config=config, segment_info=infos).line()

    carried = line({"factor": 0.8}, {"carry": 0.815, "carry_efficiency": 0.55}, {"carry": 0.3, "carry_efficiency": 0.4})
    assert carried.endswith("2 segments, texture carried 0.30-0.81"), carried
    assert "texture carried" not in line(None, {})  # not asked: not said
