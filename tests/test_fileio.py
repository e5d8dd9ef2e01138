"""nas_core.fileio: atomic writes that fail cleanly (disk full, file-size limit)."""

from __future__ import annotations

import errno
import json
import os
import pickle
import stat

import numpy as np
import pytest
import torch

from nas_core import errors, fileio


def _full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_keeps_the_old_file_and_says_so(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    fileio.atomic_write_text(target, "old")
    monkeypatch.setattr(fileio.os, "fsync", _full)
    with pytest.raises(fileio.WriteError) as e:
        fileio.atomic_write_text(target, "new")
    assert str(e.value) == (f"cannot write {target}: no space left on device; the previous file "
                            f"is unchanged")
    assert e.value.errno == errno.ENOSPC and isinstance(e.value, OSError)
    assert errors.is_known(e.value) and errors.one_line(e.value) == str(e.value)
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_first_write_failing_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio.os, "replace", _full)
    with pytest.raises(fileio.WriteError, match=r"checkpoint .*ck\.pt: no space left on device; "
                                                r"nothing was written$"):
        fileio.atomic_write_bytes(tmp_path / "ck.pt", b"x" * 10, what="checkpoint")
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_wording_and_pickling(tmp_path):
    err = fileio.WriteError(tmp_path / "ck.pt", OSError(errno.EFBIG, "File too large"),
                            what="checkpoint", existed=True)
    assert str(err).endswith("file too large (over the file-size limit, ulimit -f, or the file "
                             "system's maximum); the previous checkpoint is unchanged and a "
                             "rerun resumes from it")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is fileio.WriteError and str(back) == str(err)


# -- atomic writes and the project's JSON (moved from test_checkpoint.py with their code) -----
def test_atomic_write_bytes_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    fileio.atomic_write_bytes(target, b"one")
    fileio.atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]
    mode = stat.S_IMODE(target.stat().st_mode)
    assert mode & 0o044, "outputs must not stay 0600 (mkstemp's mode)"


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    fileio.atomic_write_json(target, {"a": 1})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        fileio.atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_dumps_json_is_plain_and_deterministic():
    obj = {"b": [1, 2.5, float("nan")], "a": {"m": np.float32(0.5), "t": torch.tensor([1, 2])},
           "rows": [[1, 2], [3, 4]]}
    text = fileio.dumps_json(obj)
    assert text == fileio.dumps_json(obj)
    assert text.endswith("}\n")
    assert json.loads(text) == {"b": [1, 2.5, None], "a": {"m": 0.5, "t": [1, 2]},
                                "rows": [[1, 2], [3, 4]]}
    assert list(json.loads(text)) == ["b", "a", "rows"]  # key order kept
