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


def test_output_below_a_file_is_refused_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "afile" / "sub" / "result")


def test_unwritable_parent_is_refused_before_any_work(tmp_path, monkeypatch):
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == os.fspath(tmp_path) else real(p, mode))
    with pytest.raises(InputError, match="not writable"):
        check_output_dir(tmp_path / "new" / "result")


def test_a_folder_that_cannot_be_made_or_filled_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    import tempfile

    out = tmp_path / "new" / "deeper" / "result"

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(tempfile, "mkdtemp", full_disk)
        with pytest.raises(InputError, match="cannot be created.*No space left"):
            with atomic_output_dir(out):
                pass
    assert list(tmp_path.iterdir()) == []  # the parent folders made for it are gone again
    with pytest.raises(InputError, match="could not be written.*No space left"):
        with atomic_output_dir(out) as tmp:
            raise OSError(28, "No space left on device", str(tmp / "segmentation.nii.gz"))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError, match="input"):  # an error reading an input stays what it is
        with atomic_output_dir(out):
            raise OSError(5, "input", str(tmp_path / "input.nii.gz"))


def test_overwrite_replaces_only_an_output_of_the_same_kind(tmp_path):
    """``compare --out BATCH --overwrite`` must not delete a cohort's analyses: the marker names the
    kind of output, and --overwrite replaces only the same kind (also a batch folder whose marker was
    written before kinds were recorded, known by its settings and summary)."""
    from deepstrain.outputs import marker_kind

    batch = tmp_path / "batch"
    with atomic_output_dir(batch, kind="batch") as tmp:
        (tmp / "study1").mkdir()
    assert marker_kind(batch) == "batch"
    with pytest.raises(InputError, match=r"holds a deepstrain batch output: --overwrite replaces only an output of the same kind \(compare\)"):
        with atomic_output_dir(batch, overwrite=True, kind="compare"):
            pass
    assert (batch / "study1").is_dir()
    (batch / MARKER).write_text("Written by deepstrain; `--overwrite` may replace this folder.\n")  # an older marker
    (batch / "settings.json").write_text("{}")
    (batch / "summary.csv").write_text("id\n")
    assert marker_kind(batch) == "batch"
    with pytest.raises(InputError, match="holds a deepstrain batch output"):
        check_output_dir(batch, overwrite=True, kind="analysis")
    (batch / "settings.json").unlink()
    assert marker_kind(batch) == ""  # an older marker, kind unknown: replaced as before
    with atomic_output_dir(batch, overwrite=True, kind="compare") as tmp:
        (tmp / "agreement.csv").write_text("metric\n")
    assert marker_kind(batch) == "compare" and not (batch / "study1").exists()


def test_an_output_inside_an_input_folder_is_refused(tmp_path):
    """An ACDC or DICOM study folder keeps only its own files: --out inside it is refused (a sibling is fine)."""
    study = tmp_path / "patient001"
    study.mkdir()
    (study / "Info.cfg").write_text("ED: 1\n")
    with pytest.raises(InputError, match="is inside the input folder"):
        check_output_dir(study / "results", inputs=[study])
    assert not (study / "results").exists()
    assert check_output_dir(tmp_path / "results", inputs=[study]) == tmp_path / "results"
    cine = tmp_path / "cine.nii.gz"  # a file input: results beside it are fine
    cine.write_bytes(b"")
    assert check_output_dir(tmp_path / "out2", inputs=[cine]) == tmp_path / "out2"


def test_orphans_of_killed_runs_are_removed_and_live_ones_kept(tmp_path):
    """A run killed with SIGKILL leaves `.res.partial-<pid>-*` / `.res.old-<pid>`: the next run writing
    `res` removes those of processes that no longer exist, and keeps those of live processes, its
    own, older unnamed ones and anything that is not such a folder."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    names = {
        f".res.partial-{dead_pid}-abc": False, f".res.old-{dead_pid}": False,  # removed
        f".res.partial-{os.getppid()}-abc": True, f".res.partial-{os.getpid()}-abc": True,
        ".res.partial-xyz": True, f".other.partial-{dead_pid}-abc": True,
    }
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "half.txt").write_text("x")
    (tmp_path / f".res.partial-{dead_pid}-file").write_text("a file, not a folder")
    with atomic_output_dir(tmp_path / "res") as tmp:
        (tmp / "a.txt").write_text("x")
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"res", f".res.partial-{dead_pid}-file"} | {n for n, kept in names.items() if kept}
