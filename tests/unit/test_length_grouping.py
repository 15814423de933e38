"""Length-grouped micro-batches: still a pure function of (seed, epoch, rank, index), the same examples per
rank and epoch as the ungrouped stream, far less padding, and `group_by_length=False` is the old stream."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from mdkif.skills.data import Example, MicroBatchStream

# Four bands of lengths, like NER tags / NLI pairs / QA answers / summaries mixed in one skill set.
BANDS = [(8, 24), (60, 100), (200, 260), (400, 512)]


def mixed(n: int = 800, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    lengths = [rng.randint(*BANDS[i % len(BANDS)]) for i in range(n)]
    # The first token is the example's id, so batches can be compared by content.
    return [Example([i] + [0] * (length - 1), [i] + [0] * (length - 1)) for i, length in enumerate(lengths)]


def ids(batch: list[Example]) -> list[int]:
    return [e.input_ids[0] for e in batch]


def padding_per_real_token(stream: MicroBatchStream, epoch: int) -> float:
    pad = real = 0
    for k in range(stream.per_epoch):
        batch = stream.batch(epoch * stream.per_epoch + k)
        width = max(len(e.input_ids) for e in batch)
        real += sum(len(e.input_ids) for e in batch)
        pad += sum(width - len(e.input_ids) for e in batch)
    return pad / real


def old_batches(examples, batch_size, seed, rank, world, epoch) -> list[list[int]]:
    """The stream before grouping, written out: seeded permutation, rank stride, consecutive slices."""
    perm = list(range(len(examples)))
    random.Random(seed * 1_000_003 + epoch).shuffle(perm)
    mine = perm[rank::world][: len(examples) // world]
    return [
        [examples[i].input_ids[0] for i in mine[j : j + batch_size]] for j in range(0, len(mine), batch_size)
    ]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_same_arguments_same_batches_at_any_index(world):
    exs = mixed(203)  # 203 does not divide by the batch or the ranks: partial batches and dropped tails
    for rank in range(world):
        a = MicroBatchStream(exs, 4, 11, rank, world)
        b = MicroBatchStream(exs, 4, 11, rank, world)
        probe = [0, 1, a.per_epoch - 1, a.per_epoch, 3 * a.per_epoch + 5, 2, 0]  # out of order on purpose
        assert [ids(a.batch(i)) for i in probe] == [ids(b.batch(i)) for i in reversed(probe)][::-1]
        assert ids(a.batch(0)) != ids(a.batch(a.per_epoch))  # a new grouping each epoch


def test_resume_sees_the_tail_of_the_uninterrupted_stream():
    exs = mixed(150)
    full = MicroBatchStream(exs, 4, 5, 1, 2).iterate(0)
    uninterrupted = [ids(next(full)) for _ in range(60)]
    for start in (0, 7, 19, 37):  # 19 = one epoch of this rank's 75 examples: an epoch boundary
        resumed = MicroBatchStream(exs, 4, 5, 1, 2).iterate(start)  # a fresh stream, as after a restart
        assert [ids(next(resumed)) for _ in range(60 - start)] == uninterrupted[start:]


@pytest.mark.parametrize("world", [1, 2])
def test_each_epoch_covers_the_same_examples_as_without_grouping(world):
    exs = mixed(402)
    for rank in range(world):
        grouped = MicroBatchStream(exs, 4, 3, rank, world)
        plain = MicroBatchStream(exs, 4, 3, rank, world, group_by_length=False)
        assert grouped.per_epoch == plain.per_epoch
        for epoch in range(3):
            n = grouped.per_epoch
            got = [ids(grouped.batch(epoch * n + k)) for k in range(n)]
            want = [ids(plain.batch(epoch * n + k)) for k in range(n)]
            assert Counter(i for b in got for i in b) == Counter(i for b in want for i in b)
            assert sorted(map(len, got)) == sorted(map(len, want))  # same batch sizes, one partial


def test_every_rank_gets_the_same_number_of_micro_batches():
    exs = mixed(101)
    counts = {MicroBatchStream(exs, 4, 0, r, 3).per_epoch for r in range(3)}
    sizes = {len(MicroBatchStream(exs, 4, 0, r, 3).epoch_batches(2)) for r in range(3)}
    assert counts == sizes == {9}  # 33 examples per rank -> 8 full micro-batches and one of 1


def test_grouping_cuts_padding_on_mixed_lengths():
    exs = mixed(800)
    for world in (1, 2):
        grouped = MicroBatchStream(exs, 4, 7, 0, world)
        plain = MicroBatchStream(exs, 4, 7, 0, world, group_by_length=False)
        for epoch in range(2):
            # Random batches of 4 pad ~0.9 tokens per real token here; grouped ones ~0.03.
            assert padding_per_real_token(plain, epoch) > 0.7
            assert padding_per_real_token(grouped, epoch) < 0.06


def test_consecutive_steps_still_mix_lengths_and_the_widest_batch_goes_first():
    exs = mixed(800)
    s = MicroBatchStream(exs, 4, 7)
    widths = [max(len(e.input_ids) for e in s.batch(k)) for k in range(s.per_epoch)]
    assert widths[0] == max(widths)
    bands = [next(i for i, (_, hi) in enumerate(BANDS) if w <= hi) for w in widths]
    assert len(set(bands[1:11])) >= 3  # the first steps see short and long batches, not one band
    changes = sum(a != b for a, b in zip(bands, bands[1:], strict=False))
    assert changes > len(bands) / 2


def test_without_grouping_the_batches_are_the_old_ones():
    exs = mixed(97)
    for world in (1, 2):
        for rank in range(world):
            s = MicroBatchStream(exs, 3, 9, rank, world, group_by_length=False)
            for epoch in range(3):
                n = s.per_epoch
                got = [ids(s.batch(epoch * n + k)) for k in range(n)]
                assert got == old_batches(exs, 3, 9, rank, world, epoch)


def test_small_data_keeps_several_groups_per_epoch():
    s = MicroBatchStream(mixed(40), 2, 0)
    assert s.mega_batch == 5  # 40 // (4 * 2): about four mega-batches, not one sorted epoch
    assert MicroBatchStream(mixed(10_000), 2, 0).mega_batch == 50
    assert MicroBatchStream(mixed(3), 4, 0).mega_batch == 1
