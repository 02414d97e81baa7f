import pytest
import torch

from metalearn.data.storage import ClassImages
from metalearn.episodes import EpisodeSampler


def make_data(n_classes=12, per_class=10, size=6, rotations=(0,), uneven=False):
    """Every image holds its own (class, index) code in its pixels so a gather can be traced back."""
    imgs, labels = [], []
    for c in range(n_classes):
        n = per_class + (c % 3 if uneven else 0)
        for i in range(n):
            img = torch.zeros(1, size, size, dtype=torch.uint8)
            img[0, 0, 0] = c          # class code
            img[0, 0, 1] = i          # image index inside its class
            img[0, size - 1, size - 1] = 200  # an asymmetric marker for rotation checks
            imgs.append(img)
            labels.append(c)
    return ClassImages.from_labels(torch.stack(imgs), labels, rotations=rotations)


def test_invariants_of_a_batch():
    data = make_data(uneven=True)
    s = EpisodeSampler(data, ways=5, shots=3, queries=4, batch_size=6, seed=0, scale=1.0)
    for _ in range(5):
        ep = s.sample()
        assert ep.support_x.shape == (6, 15, 1, 6, 6) and ep.query_x.shape == (6, 20, 1, 6, 6)
        assert ep.support_y.dtype == torch.int64 and ep.support_x.dtype == torch.float32
        for b in range(6):
            sc, si = ep.support_x[b, :, 0, 0, 0].long(), ep.support_x[b, :, 0, 0, 1].long()
            qc, qi = ep.query_x[b, :, 0, 0, 0].long(), ep.query_x[b, :, 0, 0, 1].long()
            sy, qy = ep.support_y[b], ep.query_y[b]
            # exactly K support and Q query per label 0..N-1
            assert torch.equal(torch.bincount(sy, minlength=5), torch.full((5,), 3))
            assert torch.equal(torch.bincount(qy, minlength=5), torch.full((5,), 4))
            # each label maps to one class, N distinct classes
            classes = [set(sc[sy == k].tolist()) | set(qc[qy == k].tolist()) for k in range(5)]
            assert all(len(c) == 1 for c in classes)
            assert len({next(iter(c)) for c in classes}) == 5
            # support and query disjoint, no image drawn twice
            pairs = list(zip(sc.tolist(), si.tolist())) + list(zip(qc.tolist(), qi.tolist()))
            assert len(set(pairs)) == len(pairs)
            # indices within each class's own count (uneven classes)
            for c, i in pairs:
                assert 0 <= i < int(data.counts[c])


def test_labels_are_a_fresh_random_assignment():
    data = make_data(n_classes=6)
    s = EpisodeSampler(data, ways=6, shots=1, queries=1, batch_size=50, seed=3, scale=1.0)
    ep = s.sample()
    # the class carrying label 0 varies across episodes (all 6 classes, so only the order can vary)
    first = ep.support_x[:, ep.support_y[0] == 0][:, 0, 0, 0, 0]
    assert len(set(first.long().tolist())) > 1


def test_same_seed_same_episodes_and_state_round_trip():
    data = make_data()
    a = EpisodeSampler(data, 5, 2, 3, batch_size=4, seed=7)
    b = EpisodeSampler(data, 5, 2, 3, batch_size=4, seed=7)
    c = EpisodeSampler(data, 5, 2, 3, batch_size=4, seed=8)
    ea, eb, ec = a.sample(), b.sample(), c.sample()
    assert torch.equal(ea.support_x, eb.support_x) and torch.equal(ea.query_x, eb.query_x)
    assert not torch.equal(ea.support_x, ec.support_x)
    state = a.state_dict()
    nxt = a.sample()
    a.load_state_dict(state)
    assert torch.equal(a.sample().query_x, nxt.query_x)


def test_each_rotation_class_is_drawn_independently():
    data = make_data(n_classes=10, per_class=4, size=6, rotations=(0, 90, 180, 270))
    assert data.num_classes == 40
    s = EpisodeSampler(data, ways=5, shots=1, queries=1, batch_size=200, seed=0, scale=1.0)
    ep = s.sample()
    x = ep.support_x[:, :, 0]                                    # (B, 5, 6, 6)
    # where did the corner marker (bottom-right at rotation 0) end up? -> the class's angle
    corners = torch.stack([x[..., 5, 5], x[..., 0, 5], x[..., 0, 0], x[..., 5, 0]], -1)  # 0, 90, 180, 270 ccw
    angle = corners.argmax(-1)                                   # (B, 5)
    assert set(angle.flatten().tolist()) == {0, 1, 2, 3}
    # within one task, classes carry different angles (a peer bug rotates a whole task by one angle)
    mixed = (angle != angle[:, :1]).any(dim=1).float().mean()
    assert mixed > 0.5
    # support and query of the same class share the angle
    q = ep.query_x[:, :, 0]
    qa = torch.stack([q[..., 5, 5], q[..., 0, 5], q[..., 0, 0], q[..., 5, 0]], -1).argmax(-1)
    assert torch.equal(angle, qa)
    # the same character at two angles can be two classes of one task, and they are told apart
    assert torch.equal(data.class_images(1), torch.rot90(data.class_images(0), 1, dims=(-2, -1)))


@pytest.mark.parametrize("rotations", [(0, 90, 180, 270), (90,), (0, 180)])
def test_gather_rotates_each_class_as_rot90(rotations):
    # gather() rotates by one pixel permutation; the reference is torch.rot90 of each (task, class) in a loop
    data = make_data(n_classes=12, per_class=5, size=7, rotations=rotations)
    s = EpisodeSampler(data, ways=4, shots=2, queries=2, batch_size=6, seed=1, scale=1.0)
    rows, rot_k = s.sample_indices()
    got = s.gather(rows, rot_k)
    for b in range(rows.shape[0]):
        for n in range(rows.shape[1]):
            ref = torch.rot90(data.images[rows[b, n]], int(rot_k[b, n]), dims=(-2, -1))
            assert torch.equal(got[b, n], ref)


def test_bad_input_names_the_argument():
    data = make_data(n_classes=4, per_class=5)
    with pytest.raises(ValueError, match=r"ways=5 but the split has only 4 classes"):
        EpisodeSampler(data, ways=5, shots=1, queries=1)
    with pytest.raises(ValueError, match=r"shots\+queries=6 but class '0' has only 5 images"):
        EpisodeSampler(data, ways=2, shots=3, queries=3)
    with pytest.raises(ValueError, match="shots"):
        EpisodeSampler(data, ways=2, shots=0, queries=3)
    with pytest.raises(ValueError, match="batch_size"):
        EpisodeSampler(data, ways=2, shots=1, queries=1, batch_size=0)
    with pytest.raises(TypeError, match="data"):
        EpisodeSampler(torch.zeros(3), ways=2, shots=1, queries=1)


def test_storage_validation_and_subset():
    data = make_data(n_classes=5, per_class=3)
    sub = data.subset([3, 1])
    assert sub.names == ("3", "1") and torch.equal(sub.class_images(0), data.class_images(3))
    with pytest.raises(ValueError, match="images"):
        ClassImages(torch.zeros(3, 1, 4, 4), torch.tensor([0]), torch.tensor([3]), ("a",))
    with pytest.raises(ValueError, match="rotations"):
        data.with_rotations((0, 45))
    with pytest.raises(ValueError, match="base_classes"):
        data.subset([9])
