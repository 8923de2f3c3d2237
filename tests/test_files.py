"""cellfeat.files.replacing: the one temporary-name-then-rename every writer goes through."""

from __future__ import annotations

import pytest

from cellfeat.files import replacing


def test_a_finished_write_lands_under_its_name_and_leaves_no_part(tmp_path):
    path = tmp_path / "t.csv"
    with replacing(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".t.csv.") and tmp.name.endswith(".part")
        tmp.write_text("a,b\n")
    assert path.read_text() == "a,b\n" and [p.name for p in tmp_path.iterdir()] == ["t.csv"]


def test_a_failed_write_leaves_neither_the_part_nor_a_final_file(tmp_path):
    path = tmp_path / "t.png"
    with pytest.raises(OSError, match="No space"):
        with replacing(path) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_rewrite_keeps_the_old_file(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with replacing(path) as tmp:
            tmp.write_bytes(b"new, half")
            raise KeyboardInterrupt
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["w.pth"]
