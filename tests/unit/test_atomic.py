"""Atomic writes (fedglioma.atomic): a killed writer's temporaries are removed by the next write of the same file."""

import os
import subprocess
import sys
from pathlib import Path

from fedglioma.atomic import atomic_dir, atomic_path, remove_stale, temporary_pattern, write_text


def test_temporary_names_keep_the_name_and_suffix(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "sub-1_T1.nii.gz") as tmp:
        assert temporary_pattern(tmp_path / "sub-1_T1.nii.gz", ".nii.gz").match(tmp.name)
        assert tmp.name.startswith(".sub-1_T1.nii.gz.") and tmp.name.endswith(".nii.gz")
        tmp.write_text("x")
    assert [p.name for p in tmp_path.iterdir()] == ["sub-1_T1.nii.gz"]


def test_sigkill_leaves_a_temporary_that_the_next_write_removes(tmp_path: Path) -> None:
    """A writer killed inside the block leaves its temporary (nothing can clean up after SIGKILL); the final file is
    untouched; the next write of that file removes the temporary, and a temporary of another file stays."""
    final = tmp_path / "global.json"
    final.write_text("old\n")
    code = (
        "import os, signal, sys\n"
        "from fedglioma.atomic import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_text('half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    p = subprocess.run([sys.executable, "-c", code, str(final)], env={**os.environ}, timeout=60, check=False)
    assert p.returncode == -9
    left = [q for q in tmp_path.iterdir() if q != final]
    assert len(left) == 1 and temporary_pattern(final, ".json").match(left[0].name)
    assert final.read_text() == "old\n"
    other = tmp_path / ".global.safetensors.abcd1234.safetensors"  # a temporary of another file
    other.write_text("x")
    write_text(final, "new\n")
    assert final.read_text() == "new\n"
    assert sorted(q.name for q in tmp_path.iterdir()) == sorted([final.name, other.name])


def test_stale_folder_of_a_killed_atomic_dir_is_removed(tmp_path: Path) -> None:
    stale = tmp_path / ".06_normalise.k2_x9a0b"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "a.nii.gz").write_text("half")
    keep = tmp_path / ".05_n4.k2_x9a0b"
    keep.mkdir()
    with atomic_dir(tmp_path / "06_normalise") as tmp:
        (tmp / "b.txt").write_text("done")
    assert not stale.exists() and keep.is_dir()
    assert (tmp_path / "06_normalise" / "b.txt").read_text() == "done"


def test_remove_stale_matches_only_its_own_file(tmp_path: Path) -> None:
    names = [".a.json.abcdefgh.json", ".a.json.abcdefgh.tmp", ".ab.json.abcdefgh.json", ".a.json.abc.json", "a.json"]
    for n in names:
        (tmp_path / n).write_text("")
    removed = remove_stale(tmp_path / "a.json", ".json")
    assert [p.name for p in removed] == [".a.json.abcdefgh.json"]
    assert remove_stale(tmp_path / "missing" / "a.json", ".json") == []
