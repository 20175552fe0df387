"""runtime.py: atomic directory writes, derangements."""
import pytest

from interlingua.runtime import atomic_dir, derangement


def test_atomic_dir_replaces_the_directory_whole_or_not_at_all(tmp_path):
    out = tmp_path / "member"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["member"] and (out / "old.txt").exists()
    with atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["member"]


def test_derangement_moves_every_row():
    perm = derangement(9, seed=3)
    assert sorted(perm.tolist()) == list(range(9)) and all(int(p) != i for i, p in enumerate(perm))
    assert derangement(9, seed=3).tolist() == perm.tolist()
