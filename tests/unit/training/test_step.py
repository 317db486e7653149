import pytest
import torch

from pipelines.core.config import TrainParams
from pipelines.core.errors import ConfigError
from pipelines.training import batching
from pipelines.training.modeling import Hardware, attention_implementation, check_kernels, select_hardware
from pipelines.training.step import StepConfig, make_optimizer, train_step
from tests.unit.training.test_batching import A, B, C, _tiny_lora_llama

CPU = Hardware("cpu", "float32", 0, 2)
CUDA = Hardware("cuda", "bfloat16", 1, 2)


@pytest.mark.parametrize("members, widths, parts, budget, expected", [
    ([0, 1, 2, 3], [5, 5, 5, 5], 1, None, [[0, 1, 2, 3]]),
    ([0, 1, 2, 3], [5, 5, 5, 5], 2, None, [[0, 1], [2, 3]]),
    ([0, 1, 2], [5, 5, 5], 2, None, [[0, 1], [2]]),
    ([0, 1, 2], [5, 5, 5], 8, None, [[0], [1], [2]]),  # never an empty micro-batch
    ([0, 1, 2, 3], [4, 4, 9, 9], 1, 10, [[0, 1], [2], [3]]),  # the budget counts padded tokens
    ([0, 1, 2, 3], [4, 4, 9, 9], 1, 18, [[0, 1], [2, 3]]),
])
def test_split_micro(members, widths, parts, budget, expected):
    assert batching.split_micro(members, widths, parts, budget) == expected


def _one_step(micro_rows: list[list[list]]) -> dict:
    model = _tiny_lora_llama("sdpa")
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(trainable, 1e-2, 0.0, "cpu")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    micro = [batching.collate_packed(rows, pad_id=0) for rows in micro_rows]
    for mb in micro:
        mb.pop("num_tokens")
    cfg = StepConfig(labelled=False, device="cpu", dtype=torch.float32, max_grad_norm=1e9)
    loss = train_step(model, micro, opt, sched, cfg, trainable)
    return {"loss": loss, **{n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}}


def test_accumulated_micro_batches_take_the_same_step_as_one_batch():
    """The loss is normalised over the whole step's labelled tokens, so splitting a step changes nothing."""
    whole = _one_step([[[A, B], [C], [B]]])
    split = _one_step([[[A, B]], [[C], [B]]])
    assert whole.keys() == split.keys()
    for name in whole:
        torch.testing.assert_close(whole[name], split[name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("setting, hw, generative, expected", [
    ("auto", CPU, True, "sdpa"),
    ("auto", CUDA, True, "sdpa"),
    ("auto", CPU, False, None),
    ("eager", CPU, True, "eager"),
    ("flex_attention", CUDA, True, "flex_attention"),
])
def test_attention_implementation(setting, hw, generative, expected):
    assert attention_implementation(setting, hw, generative) == expected


@pytest.mark.parametrize("call, message", [
    (lambda: attention_implementation("flex_attention", CPU, True), "flex_attention needs a CUDA GPU"),
    (lambda: check_kernels("liger", CPU), "liger needs a CUDA GPU"),
    (lambda: select_hardware("auto", "4bit"), "4bit (QLoRA) needs a CUDA GPU"),
    (lambda: select_hardware("bf16"), "bf16 needs a CUDA GPU"),
])
def test_gpu_only_settings_fail_in_one_line_on_cpu(call, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        call()
    assert "\n" not in str(err.value)


def test_micro_batch_budget_must_hold_one_example():
    with pytest.raises(ValueError, match="micro_batch_tokens .64. is smaller than max_length .128."):
        TrainParams(max_length=128, micro_batch_tokens=64)


def test_lora_dropout_defaults_per_task():
    from pipelines.core.config import LoraParams
    from pipelines.training.modeling import attach_lora

    model = _tiny_lora_llama("sdpa")
    assert model.peft_config["default"].lora_dropout == 0.0
    from transformers import BertConfig, BertForSequenceClassification

    bert = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=64, num_labels=3))
    assert attach_lora(bert, "classification", LoraParams()).peft_config["default"].lora_dropout == 0.05
