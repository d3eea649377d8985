"""16-bit and palette images, which a database could hold: read as OpenCV reads them, so
that the patches (PIL) and the NSS targets (OpenCV) see the same 8-bit image. On 8343d43 a
16-bit view became almost all white for the network (PIL's convert('L') clips at 255)."""
import numpy as np
from PIL import Image

from siqa.imageio import grey_cv2, grey_pil


def views(tmp_path):
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 65536, (40, 48)).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    Image.fromarray((wide >> 8).astype(np.uint8)).save(tmp_path / "eight.png")
    Image.fromarray(rng.integers(0, 256, (40, 48), dtype=np.uint8)).convert("P").save(tmp_path / "pal.png")
    Image.open(tmp_path / "pal.png").convert("L").save(tmp_path / "pal_as_l.png")
    return tmp_path


def test_sixteen_bit_and_palette_views_read_as_opencv_reads_them(tmp_path):
    folder = views(tmp_path)
    assert Image.open(folder / "wide.png").mode.startswith("I")
    assert Image.open(folder / "pal.png").mode == "P"
    for name in ("wide.png", "pal.png"):
        assert np.array_equal(grey_pil(folder / name), grey_cv2(folder / name)), name
    assert np.array_equal(grey_pil(folder / "wide.png"), grey_pil(folder / "eight.png"))
    assert (grey_pil(folder / "wide.png") == 255).mean() < 0.01


def test_a_sixteen_bit_pair_scores_as_its_eight_bit_copy(tmp_path, model):
    folder = views(tmp_path)
    assert model.score(folder / "wide.png", folder / "wide.png") == model.score(
        folder / "eight.png", folder / "eight.png")
    assert model.score(folder / "pal.png", folder / "pal.png") == model.score(
        folder / "pal_as_l.png", folder / "pal_as_l.png")
