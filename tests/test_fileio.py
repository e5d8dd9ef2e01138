"""nas_core.fileio: atomic writes that fail cleanly (disk full, file-size limit)."""

from __future__ import annotations

import errno
import os
import pickle

import pytest

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
