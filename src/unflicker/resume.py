"""Resuming from a --keep-work folder: finished stages are read back instead of computed again.

Right after the atlas fit the pipeline writes every A_t into DIR/atlas/ (16-bit PNG, the input's
frame names) and then DIR/.unflicker-resume.json, naming the input (path, frame count, size,
file sizes and modification times) and the resolved atlas settings. A rerun whose input and
settings match reads A_t back (exact to 1/65535, finer than the float16 A_t is kept in);
anything else fits afresh and rewrites both. The manifest is written last and removed before
the stage is rewritten, so an interrupted write is never mistaken for a finished stage.

The per-frame stages (filter, refine) are written in one pass; a stage folder only appears once
the pass has finished (see io.VideoWriter). The pass then records in the manifest which stages it
wrote and a fingerprint of the networks and settings that made them. A rerun with the same atlas
and fingerprint reads the last stage's frames back and only writes the output (a new --strength,
--crf or output format costs no network time); a killed pass leaves no record and reruns from A_t.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from unflicker import io
from unflicker.errors import InputError
from unflicker.framestore import FrameStore

MANIFEST = ".unflicker-resume.json"
STAGE = "atlas"
_VERSION = 1


def input_fingerprint(info: io.VideoInfo) -> dict:
    """What identifies an input's content cheaply: path, count, size, and its files' sizes and mtimes."""
    files = [info.path / name for name in info.frame_names] if info.is_folder else [info.path]
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return {"path": str(info.path.resolve()), "frames": info.frame_count, "size": [info.width, info.height],
            "files": digest.hexdigest()}


class WorkFolder:
    """The finished stages of one work folder, for one input and one set of atlas settings.

    settings: a JSON-able description of everything the fit depends on (e.g. asdict(AtlasConfig)).
    """

    def __init__(self, work: Path, info: io.VideoInfo, settings: dict):
        self.work, self.info = Path(work), info
        # A JSON round trip makes tuples lists, so a loaded key compares equal to a fresh one.
        self.key = json.loads(json.dumps({"version": _VERSION, "input": input_fingerprint(info),
                                          "settings": settings}))

    @property
    def folder(self) -> Path:
        return self.work / STAGE

    def load(self) -> tuple[FrameStore, list[range]] | None:
        """(A_t as (T, h, w, 3) float16 on disk, shots) if the folder holds this input's finished stage, else None."""
        manifest = self._manifest()
        if manifest is None:
            return None
        try:
            stage = self._complete_stage(self.folder)
            if stage is None:
                return None
            rendered = FrameStore((stage.height, stage.width, 3), np.float16)
            for frame in io.read_frames(self.folder, stage):
                rendered.append(io.to_float(frame.image))
        except InputError:
            return None
        shots = [range(a, b) for a, b in manifest["shots"]]
        return rendered, shots

    def _complete_stage(self, folder: Path) -> io.VideoInfo | None:
        """The stage folder's probe if it holds one frame per input frame, by name, else None.

        Raises InputError when the folder cannot be probed.
        """
        stage = io.probe(folder)
        names = [Path(io.frame_name(self.info, t)).stem for t in range(self.info.frame_count)]
        return stage if [Path(n).stem for n in stage.frame_names] == names else None

    def _write_manifest(self, manifest: dict) -> None:
        io.write_file_atomically(self.work / MANIFEST, json.dumps(manifest, indent=1).encode(), overwrite=True)

    def _manifest(self) -> dict | None:
        try:
            manifest = json.loads((self.work / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        return manifest if isinstance(manifest, dict) and manifest.get("key") == self.key else None

    def finished_pass(self, fingerprint: dict) -> list[str]:
        """Stages a finished per-frame pass with this fingerprint left in the folder ([] if none).

        fingerprint: JSON-able description of what the pass's frames depend on beyond the atlas.
        """
        manifest = self._manifest()
        record = (manifest or {}).get("pass")
        if not isinstance(record, dict) or record.get("fingerprint") != json.loads(json.dumps(fingerprint)):
            return []
        stages = record.get("stages")
        if not isinstance(stages, list) or not stages:
            return []
        try:  # every stage folder must hold every frame, by name
            if any(self._complete_stage(self.work / stage) is None for stage in stages):
                return []
        except (InputError, TypeError):
            return []
        return list(stages)

    def record_pass(self, stages: list[str], fingerprint: dict) -> None:
        """Note in the manifest that a per-frame pass wrote these stages (call once their folders are in place)."""
        manifest = self._manifest()
        if manifest is None:
            return  # no finished atlas stage to build on
        manifest["pass"] = {"stages": list(stages), "fingerprint": fingerprint}
        self._write_manifest(manifest)

    def forget_pass(self) -> None:
        """Drop the pass record before the stage folders are rewritten."""
        manifest = self._manifest()
        if manifest is not None and manifest.pop("pass", None) is not None:
            self._write_manifest(manifest)

    def save(self, rendered: np.ndarray, shots: list[range]) -> None:
        """Write A_t ((T, h, w, 3) in [0, 1]) into DIR/atlas/, then the manifest naming it."""
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / MANIFEST).unlink(missing_ok=True)
        t, h, w = rendered.shape[:3]
        layout = dataclasses.replace(self.info, height=h, width=w, bit_depth=16, grayscale=False, has_alpha=False)
        with io.VideoWriter(self.folder, layout, overwrite=True) as writer:
            for index in range(t):
                writer.write(np.clip(rendered[index].astype(np.float32), 0.0, 1.0), None,
                             io.frame_name(self.info, index))
        self._write_manifest({"key": self.key, "shots": [[s.start, s.stop] for s in shots]})
