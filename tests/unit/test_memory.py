from procmond.memory import _COMPILER_LIBRARIES, loader_mappings

MAPS = """\
55d0c0000000-55d0c0100000 r--p 00000000 fe:01 1 /usr/bin/python3.11
7f0000000000-7f0000800000 r-xp 00000000 fe:01 2 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
7f0001000000-7f0001200000 r--p 00000000 fe:01 3 /usr/lib/x86_64-linux-gnu/libclang-cpp.so.14
7f0002000000-7f0002100000 r-xp 00000000 fe:01 4 /usr/lib/x86_64-linux-gnu/libbcc.so.0.26.0
7f0003000000-7f0003001000 rw-p 00000000 00:00 0
7f0004000000-7f0004001000 r-xp 00000000 fe:01 5 /usr/lib/x86_64-linux-gnu/libc.so.6
"""


def test_only_compiler_libraries_are_selected() -> None:
    assert loader_mappings(MAPS) == [
        (0x7F0000000000, 0x7F0000800000),
        (0x7F0001000000, 0x7F0001200000),
        (0x7F0002000000, 0x7F0002100000),
    ]


def test_the_periodic_page_out_leaves_libbcc_alone() -> None:
    assert loader_mappings(MAPS, _COMPILER_LIBRARIES) == [
        (0x7F0000000000, 0x7F0000800000),
        (0x7F0001000000, 0x7F0001200000),
    ]
