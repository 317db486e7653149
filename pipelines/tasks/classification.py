"""Text classification: one label per text, a sequence-classification head trained with LoRA."""
from pipelines.tasks.spec import TaskSpec, register

SPEC = register(TaskSpec(
    name="classification", labelled=True,
    auto_model="AutoModelForSequenceClassification", peft_task_type="SEQ_CLS",
    gate_floors=(("min_accuracy", "accuracy", "min"), ("min_macro_f1", "macro_f1", "min"),
                 ("min_class_recall", "min_class_recall", "min"),
                 ("max_p95_latency_ms", "latency_p95_ms", "max"), ("max_ece", "ece", "max")),
    paired_score="correct", paired_test="mcnemar",
    routes=("/v1/classify",), headline="accuracy",
    lora_dropout=0.05,
))
