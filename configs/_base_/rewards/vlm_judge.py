# A VLM judge behind an OpenAI-compatible /v1/chat/completions endpoint (e.g. vLLM serving a
# Qwen2.5-VL model). The key is read from $VLM_API_KEY (drop api_key_env for a server without one).
reward = dict(
    type='VLMJudgeReward',
    url='http://127.0.0.1:8000/v1/chat/completions',
    model_name='Qwen/Qwen2.5-VL-7B-Instruct',
    api_key_env='VLM_API_KEY',
    template='How well does the image match the prompt "{prompt}"? '
             'Answer with one integer from 0 (not at all) to 10 (perfectly), nothing else.',
    score_regex=r'(\d+)',
    score_range=(0, 10),
    fallback=None,
    concurrency=8,
    timeout=120,
)
