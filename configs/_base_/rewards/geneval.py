# GenEval-style structured checks: each prompt record is a GenEval spec (tag, include, exclude);
# a detector server speaking the HTTPDetector protocol (treegrpo/rewards/structured_detectors.py)
# returns the boxes. mode='strict' is GenEval's all-or-nothing score; 'fraction' is denser.
reward = dict(
    type='StructuredReward',
    mode='fraction',
    score_threshold=0.3,
    detector=dict(type='HTTPDetector', url='http://127.0.0.1:8001/detect', timeout=60,
                  secret_env='TREEGRPO_DETECTOR_SECRET'),
)
