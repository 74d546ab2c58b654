"""How a mini-batch's rows are split into forward passes (``train.micro_batch_order``)."""

from __future__ import annotations

import torch

from agentropy.training.minibatch import micro_batches


def test_shuffled_order_keeps_the_mini_batch_order():
    assert micro_batches([5, 0, 3, 1, 4], 2) == [[5, 0], [3, 1], [4]]


def test_by_length_groups_rows_of_similar_length_and_breaks_ties_by_row():
    lengths = torch.tensor([300, 40, 310, 45, 300, 42])
    assert micro_batches([0, 1, 2, 3, 4, 5], 2, lengths) == [[1, 5], [3, 0], [4, 2]]
    # the padded positions of the forward passes: widest row x rows, summed
    def padded(groups):
        return sum(len(g) * max(int(lengths[i]) for i in g) for g in groups)

    assert padded(micro_batches([0, 1, 2, 3, 4, 5], 2)) == 2 * 300 + 2 * 310 + 2 * 300
    assert padded(micro_batches([0, 1, 2, 3, 4, 5], 2, lengths)) == 2 * 42 + 2 * 300 + 2 * 310


def test_every_row_is_in_exactly_one_pass():
    lengths = torch.randint(1, 500, (37,), generator=torch.Generator().manual_seed(0))
    rows = torch.randperm(37, generator=torch.Generator().manual_seed(1)).tolist()[:29]
    for given in (None, lengths):
        groups = micro_batches(rows, 4, given)
        assert sorted(i for g in groups for i in g) == sorted(rows)
        assert [len(g) for g in groups] == [4] * 7 + [1]


def test_grouped_puts_identical_rows_side_by_side_within_a_length():
    lengths = torch.tensor([50, 50, 50, 50, 60, 60])
    contents = [b"b", b"a", b"b", b"a", b"c", b"c"]
    # length 50: a (rows 1, 3) before b (rows 0, 2); then length 60
    assert micro_batches([0, 1, 2, 3, 4, 5], 2, lengths, contents) == [[1, 3], [0, 2], [4, 5]]
    assert micro_batches([2, 0, 4], 2, lengths, contents) == [[0, 2], [4]]
