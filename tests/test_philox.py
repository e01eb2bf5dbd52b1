"""The counter-based generator: C++ and PyTorch twins against Random123's known answers and each other."""
import torch

from fastdoctor import _C, reference

# Random123's kat_vectors for philox4x32_10: (counter, key) -> output.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def test_cpp_philox_matches_known_answers():
    for counter, key, expected in KNOWN_ANSWERS:
        assert _C.philox4x32_10(*counter, *key) == expected


def test_torch_philox_matches_known_answers():
    counters = torch.tensor([c for c, _, _ in KNOWN_ANSWERS], dtype=torch.int64)
    keys = torch.tensor([k for _, k, _ in KNOWN_ANSWERS], dtype=torch.int64)
    out = reference.philox4x32_10(counters, keys)
    assert [tuple(row) for row in out.tolist()] == [e for _, _, e in KNOWN_ANSWERS]


def test_uniforms_agree_bit_for_bit_between_cpp_and_torch():
    seeds = torch.tensor([0, 1, -1, 2**40 + 7, -(2**62), 123456789], dtype=torch.int64)
    steps = torch.tensor([0, 1, 2**33, 5, 17, -3], dtype=torch.int64)
    ours = reference.philox_uniform(seeds, steps)
    theirs = [_C.philox_uniform(int(s), int(t), 0) for s, t in zip(seeds, steps)]
    assert ours.tolist() == theirs
    assert all(0.0 <= u < 1.0 for u in theirs)


def test_uniforms_look_uniform():
    seeds = torch.arange(20000, dtype=torch.int64)
    u = reference.philox_uniform(seeds, torch.full_like(seeds, 3))
    counts = torch.histc(u.float(), bins=10, min=0, max=1)
    # 2000 expected per bin; 6 standard deviations is about 270.
    assert (counts - 2000).abs().max() < 270
    assert len(set(u.tolist())) == len(u)
