"""Mask samplers: exact counts, contiguous squares, reproducibility, uniformity of the random sampler."""
import pytest
import torch

from ssast.models.masking import cluster_mask, inverse_block_mask, num_masked, random_mask, sample_mask


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("batch", [1, 3, 17])
@pytest.mark.parametrize("f_rows, t_cols", [(8, 64), (8, 8), (1, 40), (2, 4)])
def test_exact_counts(batch, f_rows, t_cols):
    n = f_rows * t_cols
    for num_mask in sorted({1, 2, n // 4, (3 * n) // 4, n - 1, n}):
        for seed in range(4):
            c = cluster_mask(batch, f_rows, t_cols, num_mask, generator=gen(seed))
            r = random_mask(batch, n, num_mask, generator=gen(seed))
            for m in (c, r):
                assert m.dtype == torch.bool and m.shape == (batch, n)
                assert (m.sum(dim=1) == num_mask).all()


def test_reproducible_from_generator():
    a = cluster_mask(6, 8, 64, 400, generator=gen(7))
    b = cluster_mask(6, 8, 64, 400, generator=gen(7))
    c = cluster_mask(6, 8, 64, 400, generator=gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(random_mask(4, 100, 30, generator=gen(1)), random_mask(4, 100, 30, generator=gen(1)))
    assert not torch.equal(random_mask(4, 100, 30, generator=gen(1)), random_mask(4, 100, 30, generator=gen(2)))
    # clips of one batch differ from each other
    assert not torch.equal(a[0], a[1])


def isolated(mask, f_rows, t_cols):
    """Per clip, masked tokens with no masked 4-neighbour."""
    g = mask.view(-1, f_rows, t_cols).float()
    padded = torch.nn.functional.pad(g, (1, 1, 1, 1))
    nb = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    return ((g > 0) & (nb == 0)).sum(dim=(1, 2))


def test_cluster_masks_are_made_of_squares():
    # At 20% density random tokens are often alone; squares leave at most the trimmed part of the last one alone.
    c = cluster_mask(200, 8, 64, 100, cluster_sizes=(3, 4, 5), generator=gen(0))
    r = random_mask(200, 512, 100, generator=gen(0))
    iso_c, iso_r = isolated(c, 8, 64), isolated(r, 8, 64)
    assert iso_c.max() <= 24  # fewer than one 5x5 square
    assert iso_c.float().mean() < 3 and iso_r.float().mean() > 20


@pytest.mark.parametrize("side", [3, 4, 5])
def test_single_cluster_is_a_square(side):
    f_rows, t_cols = 10, 24
    masks = cluster_mask(300, f_rows, t_cols, side * side, cluster_sizes=(side,), generator=gen(side))
    squares = 0
    for m in masks.view(-1, f_rows, t_cols):
        rows = m.any(dim=1).nonzero().flatten()
        cols = m.any(dim=0).nonzero().flatten()
        box = m[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        squares += int(box.shape == (side, side) and bool(box.all()))
    # a square is exact unless its centre is close enough to the border to be clipped
    inside = (f_rows - side + 1) * (t_cols - side + 1) / (f_rows * t_cols)
    assert squares / len(masks) > inside - 0.12


def test_single_row_grid_gives_runs():
    masks = cluster_mask(200, 1, 50, 4, cluster_sizes=(4,), generator=gen(3))
    runs = 0
    for m in masks.view(200, 50):
        idx = m.nonzero().flatten()
        runs += int(idx.max() - idx.min() == 3)
    assert runs / 200 > 0.8


def test_cluster_coverage_is_symmetric_and_uses_every_token():
    m = cluster_mask(3000, 8, 16, 60, cluster_sizes=(4,), generator=gen(11)).view(3000, 8, 16).float()
    rows, cols = m.mean(dim=(0, 2)), m.mean(dim=(0, 1))
    assert abs(rows[0] - rows[-1]) < 0.04 and abs(cols[0] - cols[-1]) < 0.04
    assert rows[0] < rows[4]  # borders covered by fewer square positions
    assert m.sum(dim=0).min() > 0  # corners included (the authors' sampler never masks token 0)


def test_random_mask_is_uniform():
    n, m, draws = 64, 16, 4000
    freq = random_mask(draws, n, m, generator=gen(5)).float().mean(dim=0)
    assert torch.allclose(freq, torch.full((n,), m / n), atol=0.03)


def test_sample_mask_dispatch_and_errors():
    c = sample_mask("cluster", 2, (8, 8), 20, generator=gen(0))
    r = sample_mask("random", 2, (1, 64), 20, generator=gen(0))
    assert c.shape == (2, 64) and r.shape == (2, 64) and (c.sum(1) == 20).all() and (r.sum(1) == 20).all()
    assert sample_mask("random", 1, (1, 8), 3, device="cpu").device.type == "cpu"
    b = sample_mask("inverse_block", 2, (1, 64), 20, (4,), generator=gen(0))
    assert b.shape == (2, 64) and (b.sum(1) == 20).all()
    with pytest.raises(ValueError, match="mode"):
        sample_mask("blocks", 2, (8, 8), 20)
    with pytest.raises(ValueError, match="65 of 64"):
        random_mask(1, 64, 65)
    with pytest.raises(ValueError):
        cluster_mask(1, 8, 8, 0)
    with pytest.raises(ValueError, match="cluster_sizes"):
        cluster_mask(1, 8, 8, 4, cluster_sizes=())


@pytest.mark.parametrize("f_rows, t_cols", [(8, 64), (8, 8), (1, 64), (2, 4)])
def test_inverse_block_exact_counts(f_rows, t_cols):
    n = f_rows * t_cols
    for num_mask in sorted({1, 2, n // 4, (3 * n) // 4, (9 * n) // 10, n - 1, n}):
        for seed in range(3):
            m = inverse_block_mask(5, f_rows, t_cols, num_mask, block_sizes=(5,), generator=gen(seed))
            assert m.dtype == torch.bool and m.shape == (5, n) and (m.sum(dim=1) == num_mask).all()


def test_inverse_block_changes_with_the_seed():
    a = inverse_block_mask(6, 8, 64, 400, generator=gen(7))
    assert torch.equal(a, inverse_block_mask(6, 8, 64, 400, generator=gen(7)))
    assert not torch.equal(a, inverse_block_mask(6, 8, 64, 400, generator=gen(8)))
    assert not torch.equal(a[0], a[1])
    assert torch.equal(sample_mask("inverse_block", 6, (8, 64), 400, (5,), generator=gen(7)), a)


def outside_visible_blocks(visible, side):
    """Per clip, visible tokens that no fully visible side x side block (clipped at the border as a block centred on
    a grid token is) contains."""
    batch, f_rows, t_cols = visible.shape
    covered = torch.zeros_like(visible)
    for r0 in range(-(side // 2), f_rows - (side - 1) // 2):
        for c0 in range(-(side // 2), t_cols - (side - 1) // 2):
            rs, cs = slice(max(r0, 0), min(r0 + side, f_rows)), slice(max(c0, 0), min(c0 + side, t_cols))
            full = visible[:, rs, cs].flatten(1).all(dim=1)
            covered[:, rs, cs] |= full[:, None, None]
    return (visible & ~covered).flatten(1).sum(dim=1)


@pytest.mark.parametrize("f_rows, t_cols, num_mask", [(8, 24, 144), (8, 8, 40), (1, 64, 48), (1, 64, 32)])
def test_inverse_block_visible_set_is_blocks(f_rows, t_cols, num_mask):
    # patch grids keep 5x5 squares, frame grids (one row) spans of 5 frames: every visible token lies in a fully
    # visible block except the trimmed part of the last block; random masks at the same ratio scatter instead
    side, batch = 5, 200
    keep = min(side, f_rows) * side - 1
    inv = ~inverse_block_mask(batch, f_rows, t_cols, num_mask, block_sizes=(side,), generator=gen(4))
    rnd = ~random_mask(batch, f_rows * t_cols, num_mask, generator=gen(4))
    stray_inv = outside_visible_blocks(inv.view(batch, f_rows, t_cols), side)
    stray_rnd = outside_visible_blocks(rnd.view(batch, f_rows, t_cols), side)
    assert stray_inv.max() <= keep
    assert stray_rnd.float().mean() > 2 * stray_inv.float().mean() + 1


def test_num_masked():
    assert num_masked(400, 512) == 400
    assert num_masked(400.0, 512) == 400
    assert num_masked(0.75, 512) == 384
    assert num_masked(512, 512) == 512
    with pytest.raises(ValueError, match="mask_patch"):
        num_masked(600, 512)
    with pytest.raises(ValueError, match="mask_patch"):
        num_masked(0.0001, 512)
    with pytest.raises(ValueError, match="mask_patch"):
        num_masked(0, 512)
    with pytest.raises(ValueError, match="whole number"):
        num_masked(2.5, 512)


def _authors_reference(side: int, anchors: list[int], t_cols: int, n: int, num_mask: int) -> list[int] | None:
    """The authors' loop (ssast src/models/ast_models.py gen_maskid_patch), fed our anchors in order; None when
    they run out before the loop would stop (ours then fills with the lowest uncovered tokens)."""
    ids: list[int] = []
    for start in anchors:
        ids += [start + t_cols * i + j for i in range(side) for j in range(side) if 0 < start + t_cols * i + j < n]
        if len(set(ids)) > num_mask:
            return sorted(set(ids))[:num_mask]  # list(set(small ints)) is ascending
    return None


@pytest.mark.parametrize("grid, num_mask", [((8, 64), 400), ((8, 12), 30), ((3, 4), 6), ((1, 40), 20)])
def test_authors_sampler_is_their_loop(grid, num_mask):
    from ssast.models.masking import cluster_square_budget

    f_rows, t_cols = grid
    n = f_rows * t_cols
    mask = cluster_mask(16, f_rows, t_cols, num_mask, generator=torch.Generator().manual_seed(3), sampler="authors")
    # the same draws, in the same order: side per clip, then the anchors
    g = torch.Generator().manual_seed(3)
    sides = torch.tensor([3, 4, 5])[torch.randint(3, (16, 1), generator=g)][:, 0]
    budget = 2 * cluster_square_budget(f_rows, t_cols, num_mask, 3)
    anchors = torch.randint(n, (16, budget, 1), generator=g)[..., 0]
    short = 0
    for b in range(16):
        want = _authors_reference(int(sides[b]), anchors[b].tolist(), t_cols, n, num_mask)
        short += want is None
        if want is not None:
            assert torch.nonzero(mask[b])[:, 0].tolist() == want
    assert short <= (0 if n >= 96 else 8)  # the budget suffices on real grids; tiny ones may fall back
    assert (mask.sum(1) == num_mask).all()
    assert not mask[:, 0].any() and not mask[:, -1].any()  # their quirks: token 0 and the last never masked


def test_authors_sampler_squares_wrap_and_trim_drops_the_highest():
    # one 3x3 square anchored at the last column of row 0 of a 4x5 grid wraps into the next rows' first columns
    from ssast.models.masking import _authors_squares

    side = torch.tensor([[3]])
    # find a seed whose first anchor is token 4 (row 0, last column)
    for seed in range(200):
        g = torch.Generator().manual_seed(seed)
        if int(torch.randint(20, (1, 1, 1), generator=g)) == 4:
            break
    mask = _authors_squares(side, 3, 4, 5, 8, 1, torch.Generator().manual_seed(seed))
    # the square: 4,5,6 / 9,10,11 / 14,15,16 (5 and 6 are row 1, 10 and 11 row 2...): 9 tokens > 8, the trim drops 16
    assert torch.nonzero(mask[0])[:, 0].tolist() == [4, 5, 6, 9, 10, 11, 14, 15]


def test_authors_sampler_rejects_a_count_their_loop_never_reaches():
    with pytest.raises(ValueError, match="at most 510"):
        cluster_mask(2, 8, 64, 511, sampler="authors")


def test_pretrain_model_uses_the_authors_sampler_when_asked():
    from ssast.config import ConfigError, load_config
    from ssast.models.pretrain import build_pretrain_model

    tiny = ["task=pretrain", "model.size=custom", "model.dim=32", "model.depth=1", "model.heads=2",
            "audio.target_length=64", "model.input_tdim=64", "model.mask_patch=12"]  # an 8 x 4 grid of 16x16 patches
    ours = build_pretrain_model(load_config(None, tiny).model)
    theirs = build_pretrain_model(load_config(None, tiny + ["model.mask_sampler=authors"]).model)
    a = theirs.sample_mask(64, generator=gen(0))
    assert (a.sum(1) == 12).all() and not a[:, 0].any() and not a[:, -1].any()
    assert ours.sample_mask(64, generator=gen(0))[:, 0].any()  # ours can mask token 0
    out = theirs(torch.randn(2, 64, 128), generator=gen(1))
    assert torch.isfinite(out.loss) and out.mask.sum() == 24
    with pytest.raises(ConfigError, match="mask_sampler=authors masks at most 30"):
        load_config(None, tiny + ["model.mask_sampler=authors", "model.mask_patch=31"])
