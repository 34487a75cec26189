"""Training batches: every pass is a fresh seeded permutation of all rows, the same sequence of
permutations for the same seed."""

import numpy as np

from tte_tfrs.data.tfdata import batches_of, shuffled_batches


def passes(data, count):
    iterator_passes = []
    for _ in range(count):
        iterator_passes.append([batch.numpy().tolist() for batch in data])
    return iterator_passes


def test_each_pass_is_a_new_permutation_of_every_row_and_the_seed_fixes_the_sequence():
    first = passes(shuffled_batches(10, 4, seed=42), 3)
    assert int(shuffled_batches(10, 4, seed=42).cardinality()) == 3     # Keras needs it
    for batches in first:
        assert [len(b) for b in batches] == [4, 4, 2]
        assert sorted(sum(batches, [])) == list(range(10))
    assert first[0] != first[1] != first[2]
    assert passes(shuffled_batches(10, 4, seed=42), 3) == first
    assert passes(shuffled_batches(10, 4, seed=7), 1)[0] != first[0]
    repeated = [b.numpy().tolist() for b in shuffled_batches(10, 4, seed=42).repeat(2)]
    assert repeated[:3] != repeated[3:]                    # repetitions reshuffle too


def test_shuffled_training_batches_gather_the_rows_of_the_permutation():
    tensors = {"x": np.arange(10) * 10, "y": {"z": np.arange(10).astype(np.float32)}}
    batches = [b for b in batches_of(tensors, 4, shuffle=True, seed=1)]
    rows = np.concatenate([b["y"]["z"].numpy() for b in batches]).astype(int)
    assert sorted(rows) == list(range(10)) and list(rows) != list(range(10))
    np.testing.assert_array_equal(np.concatenate([b["x"].numpy() for b in batches]), rows * 10)
