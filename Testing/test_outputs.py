import os
import stat

import pytest

from deepstrain.errors import InputError
from deepstrain.outputs import MARKER, atomic_output_dir, check_output_dir


def test_complete_block_creates_folder(tmp_path):
    out = tmp_path / "res"
    with atomic_output_dir(out) as tmp:
        (tmp / "a.txt").write_text("x")
    assert (out / "a.txt").read_text() == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["res"]  # no temporary folder left


def test_failure_leaves_nothing(tmp_path):
    out = tmp_path / "res"
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out) as tmp:
            (tmp / "a.txt").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_existing_non_empty_folder_is_protected(tmp_path):
    out = tmp_path / "res"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    with pytest.raises(InputError, match="not empty"):
        with atomic_output_dir(out):
            pass
    assert (out / "mine.txt").read_text() == "user data"
    (out / "mine.txt").unlink()
    with atomic_output_dir(out) as tmp:
        (tmp / "old.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        with atomic_output_dir(out):
            pass
    with atomic_output_dir(out, overwrite=True) as tmp:  # a folder deepstrain wrote is replaced whole
        (tmp / "new.txt").write_text("y")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "new.txt"]


def test_overwrite_replaces_only_a_folder_deepstrain_wrote(tmp_path):
    out = tmp_path / "res"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    with pytest.raises(InputError, match="not written by deepstrain"):
        with atomic_output_dir(out, overwrite=True):
            pass
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


@pytest.mark.parametrize("where", ["itself", "parent"])
def test_output_folder_holding_an_input_is_refused_even_with_overwrite(tmp_path, where):
    out = tmp_path / "study"
    with atomic_output_dir(out) as tmp:  # a deepstrain folder, into which the user put an input
        (tmp / "x.txt").write_text("old result")
    (out / "cine.nii.gz").write_bytes(b"input")
    target = out if where == "itself" else tmp_path
    (tmp_path / MARKER).write_text("")
    for ow in (False, True):
        with pytest.raises(InputError, match="contains, the input"):
            check_output_dir(target, overwrite=ow, inputs=[out / "cine.nii.gz"])
        with pytest.raises(InputError, match="contains, the input"):
            with atomic_output_dir(target, overwrite=ow, inputs=[None, out / "cine.nii.gz"]):
                pass
    assert (out / "cine.nii.gz").read_bytes() == b"input"


def test_results_get_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_output_dir(tmp_path / "res") as tmp:
            (tmp / "sub").mkdir()
            (tmp / "sub" / "a.txt").write_text("x")
            os.chmod(tmp / "sub" / "a.txt", 0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "res").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "res" / "sub").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "res" / "sub" / "a.txt").stat().st_mode) == 0o644


def test_output_path_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("keep")
    with pytest.raises(InputError):
        with atomic_output_dir(f):
            pass
    assert f.read_text() == "keep"
