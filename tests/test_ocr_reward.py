"""OCRReward: edit distance and normalisation by hand, the fake engine, errors."""
import pytest
import torch

from treegrpo.registry import REWARDS, build
from treegrpo.rewards.ocr import (FixedTextEngine, OCRReward, RapidOCREngine, edit_distance,
                                  normalise_text, text_similarity)


@pytest.mark.parametrize("a, b, d", [
    ("", "", 0), ("abc", "", 3), ("", "ab", 2), ("kitten", "sitting", 3),
    ("flaw", "lawn", 2), ("abc", "abc", 0), ("ab", "ba", 2), ("sunday", "saturday", 3),
])
def test_edit_distance_by_hand(a, b, d):
    assert edit_distance(a, b) == d == edit_distance(b, a)


def test_normalise_text_and_similarity():
    assert normalise_text("  Hello,\n  WORLD!  ") == "hello, world!"
    assert normalise_text("Hello,  World!", ignore_punctuation=True) == "hello world"
    assert normalise_text("Hello World", case_sensitive=True) == "Hello World"
    assert text_similarity("", "") == 1.0
    assert text_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert text_similarity("abc", "xyz") == 0.0


def test_ocr_reward_scores_the_fake_engine_reading_against_the_metadata_text():
    reward = build(REWARDS, dict(type="OCRReward",
                                 engine=dict(type="FixedTextEngine", texts=["Hello  World", "kitten", "STOP!"])))
    images = torch.rand(3, 3, 8, 8)
    meta = [{"text": "hello world"}, {"text": "sitting"}, {"text": "stop"}]
    scores = reward(images, ["a", "b", "c"], metadata=meta)
    assert scores.dtype == torch.float32
    # 'stop!' vs 'stop': one deletion over 5 characters
    assert scores.tolist() == pytest.approx([1.0, 1 - 3 / 7, 1 - 1 / 5])
    strict = OCRReward(FixedTextEngine(["STOP!"]), text_key="sign", ignore_punctuation=True, case_sensitive=True)
    assert strict(images[:1], ["a"], metadata=[{"sign": "STOP"}]).tolist() == [1.0]
    assert strict(images[:1], ["a"], metadata=[{"sign": "stop"}]).tolist() == [0.0]


def test_ocr_reward_errors():
    reward = OCRReward(dict(type="FixedTextEngine", texts=["x"]))
    images = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="needs metadata with the target text under 'text'"):
        reward(images, ["a", "b"])
    with pytest.raises(ValueError, match=r"metadata\[1\] has no string 'text'.*set text_key"):
        reward(images, ["a", "b"], metadata=[{"text": "a"}, {"caption": "b"}])
    with pytest.raises(ValueError, match="got 2 images but 1 metadata"):
        reward(images, ["a", "b"], metadata=[{"text": "a"}])
    bad = OCRReward(lambda images: ["only one"])
    with pytest.raises(ValueError, match="engine must return 2 strings"):
        bad(images, ["a", "b"], metadata=[{"text": "a"}, {"text": "b"}])
    with pytest.raises(KeyError, match="unknown ocr_engine type 'Nope'"):
        OCRReward(dict(type="Nope"))
    with pytest.raises(ValueError, match="text_key must be a non-empty string"):
        OCRReward(FixedTextEngine(["x"]), text_key="")
    with pytest.raises(ValueError, match="texts must be a non-empty list"):
        FixedTextEngine("abc")


def test_rapidocr_engine_needs_local_model_files(tmp_path):
    with pytest.raises(ValueError, match="det_model_path must be the path of a local .onnx file.*nothing is downloaded"):
        RapidOCREngine(det_model_path=None, rec_model_path="x")
    det = tmp_path / "det.onnx"
    det.write_bytes(b"0")
    with pytest.raises(ValueError, match=r"rec_model_path='.*missing.onnx' is not a file"):
        RapidOCREngine(det_model_path=str(det), rec_model_path=str(tmp_path / "missing.onnx"))
    engine = RapidOCREngine(det_model_path=str(det), rec_model_path=str(det))
    try:
        import rapidocr_onnxruntime  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r'pip install -e "\.\[ocr\]"'):
            engine.load()
