"""Causal language modelling: chat or prompt/response rows, supervised fine-tuning on the responses."""
from pipelines.tasks.spec import TaskSpec, register

SPEC = register(TaskSpec(
    name="causal_lm", labelled=False,
    auto_model="AutoModelForCausalLM", peft_task_type="CAUSAL_LM",
    gate_floors=(("max_perplexity", "perplexity", "max"), ("min_rouge_l", "rouge_l", "min"),
                 ("min_exact_match", "exact_match", "min"),
                 ("min_golden_pass_rate", "golden_pass_rate", "min"),
                 ("min_json_valid", "json_valid", "min"), ("min_field_match", "field_match", "min"),
                 ("max_answer_pii", "answer_pii", "max"), ("max_ttft_p95_ms", "ttft_p95_ms", "max"),
                 ("max_canary_leaks", "canary_leaks", "max"), ("max_canary_exposure", "canary_exposure_max", "max")),
    paired_score="rouge_l", paired_test="bootstrap",
    routes=("/v1/chat/completions", "/v1/completions"), headline="rouge_l",
    # 0: with any dropout peft keeps a float32 copy of every LoRA input for the backward pass
    lora_dropout=0.0,
    # a classifier's base has an untrained head (chance by construction); a base LM answers as it is
    compares_base=True,
))
