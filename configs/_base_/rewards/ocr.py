# Text rendering: 1 - normalised edit distance between what RapidOCR reads and each prompt record's
# 'text' field. Needs `pip install -e ".[ocr]"` and the PP-OCR ONNX files on this machine (nothing
# is downloaded; the rapidocr-onnxruntime wheel ships PP-OCRv4 det / rec models you can copy).
reward = dict(
    type='OCRReward',
    text_key='text',
    ignore_punctuation=False,
    engine=dict(type='RapidOCREngine',
                det_model_path='weights/ocr/ch_PP-OCRv4_det_infer.onnx',
                rec_model_path='weights/ocr/ch_PP-OCRv4_rec_infer.onnx'),
)
