import pytest

from deepstrain.errors import InputError
from deepstrain.outputs import atomic_output_dir


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
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("y")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]


def test_output_path_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("keep")
    with pytest.raises(InputError):
        with atomic_output_dir(f):
            pass
    assert f.read_text() == "keep"
