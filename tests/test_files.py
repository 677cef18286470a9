"""files.write_atomically: whole files or none, errors that name the file."""

import pytest

from conformer_asr.files import write_atomically


def test_writes_text_and_bytes_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "out.txt"
    write_atomically(target, "first\n")
    write_atomically(target, b"second\n")
    assert target.read_bytes() == b"second\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_failed_write_names_the_file_and_removes_its_temporary(tmp_path):
    folder = tmp_path / "taken"
    folder.mkdir()  # a folder where the file should go: the rename fails
    with pytest.raises(IsADirectoryError) as raised:
        write_atomically(folder, "data")
    assert raised.value.filename == str(folder)
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]
    assert not list(folder.iterdir())
