"""The TRL side of the trainer benchmark: `trl_worker` runs TRL 1.16's `DPOTrainer` in a child process on the rows
`workload.build_rows` wrote (the token ids of `cst_dist.chat.ChatEncoder`, the same as cst trains on) and records
every optimizer step's wall time, tokens, model FLOPs and peak memory."""

from __future__ import annotations

import json
import resource
import time


class PromptCutCollator:
    """TRL 1.16 dropped `max_prompt_length`; this cuts prompt ids from the left to it before TRL's own collator (which
    then cuts prompt + response to `max_length`, keeping the start), i.e. what TRL < 0.20 and `cst` do."""

    def __init__(self, inner, max_prompt_length: int | None):
        self.inner, self.max_prompt_length = inner, max_prompt_length

    def __call__(self, examples):
        if self.max_prompt_length:
            examples = [
                {**ex, "prompt_ids": ex["prompt_ids"][-self.max_prompt_length:]}
                if len(ex["prompt_ids"]) > self.max_prompt_length else ex
                for ex in examples
            ]
        return self.inner(examples)


def peak_memory_bytes(cuda: bool) -> int:
    """What `cst train` logs as peak_memory_gib, in bytes: allocated GPU memory, else this process's peak RSS."""
    import torch

    if cuda:
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def dpo_config(spec: dict):
    """DPOConfig matching the cst settings (see the entry point's docstring)."""
    from trl import DPOConfig

    cuda = spec["device"] == "cuda"
    return DPOConfig(
        output_dir=spec["output_dir"],
        per_device_train_batch_size=spec["micro_batch"],
        gradient_accumulation_steps=spec["accumulation"],
        max_steps=spec["steps"],
        learning_rate=spec["learning_rate"],
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        beta=spec["beta"],
        loss_type=["sigmoid"],
        max_length=spec["max_length"],
        precompute_ref_log_probs=spec["precompute"],
        # DPOConfig defaults to True; cst-dist's default is off (the trl-gc variant turns it on)
        gradient_checkpointing=spec["gradient_checkpointing"],
        bf16=cuda,  # both sides: fp32 on CPU, bf16 on GPU
        use_cpu=not cuda,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=1,  # cst logs every step too
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        seed=spec["seed"],
    )


def trl_worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    import transformers
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from cst_dist.flops import model_shape

    rows = [json.loads(line) for line in open(spec["rows"], encoding="utf-8") if line.strip()]
    dataset = Dataset.from_list(rows)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # as cst_dist.models.load_tokenizer does
    cuda = spec["device"] == "cuda"
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.bfloat16 if cuda else torch.float32,
                                                 attn_implementation="sdpa")
    shape = model_shape(model.config)  # the same model FLOPs (cst_dist.flops) as the cst trainer logs
    transformers.logging.set_verbosity_error()
    args = dpo_config(spec)
    collator = PromptCutCollator(
        DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id, max_length=spec["max_length"],
                                  truncation_mode="keep_start", pad_to_multiple_of=None),
        spec["max_prompt_length"],
    )
    record = {"precompute_s": 0.0, "micro": [], "steps": []}

    class Bench(DPOTrainer):
        def _prepare_dataset(self, dataset, *a, **kw):
            # The rows hold token ids already (the project's chat encoder, as cst tokenizes them): TRL's own
            # tokenization would differ by its EOS and BOS rules. Rows whose prompt fills max_length were left out.
            return dataset

        def training_step(self, *a, **kw):
            inputs = a[1] if len(a) > 1 else kw["inputs"]
            mask = inputs["attention_mask"]
            record["micro"].append((int(mask.sum()), int(mask.numel()), list(mask.shape), mask.sum(-1).tolist()))
            return super().training_step(*a, **kw)

        def _precompute_ref_logps(self, *a, **kw):
            started = time.perf_counter()
            out = super()._precompute_ref_logps(*a, **kw)
            record["precompute_s"] += time.perf_counter() - started
            return out

    class Timing(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            record["train_begin"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            micro, record["micro"] = record["micro"], []
            lengths = [n for m in micro for n in m[3]]  # TRL concatenates chosen and rejected rows in one forward
            record["steps"].append({
                "step": state.global_step, "t_end": time.perf_counter(),
                "real": sum(m[0] for m in micro), "slots": sum(m[1] for m in micro),
                "shapes": [m[2] for m in micro],
                "flops": shape.training_flops(lengths, () if spec["precompute"] else lengths),
                "peak_memory_gib": peak_memory_bytes(cuda) / 2**30,
            })

    started = time.perf_counter()
    trainer = Bench(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                    data_collator=collator, callbacks=[Timing()])
    init_s = time.perf_counter() - started
    started = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - started
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    steps = record["steps"]
    previous = record["train_begin"]
    for entry in steps:
        entry["wall_s"] = entry["t_end"] - previous
        previous = entry.pop("t_end")
    return {
        "init_s": init_s, "train_s": train_s, "precompute_s": record["precompute_s"],
        "peak_memory_gib": peak_memory_bytes(cuda) / 2**30,
        "rows_after_trl_filter": len(trainer.train_dataset), "steps": steps, "losses": losses,
        "optimizer": str(args.optim), "torch_threads": torch.get_num_threads(),
        "gradient_checkpointing": bool(args.gradient_checkpointing),
        "padding": "right-padded to the longest of the micro-batch's 2B sequences (DataCollatorForPreference, "
                   "pad_to_multiple_of=None), chosen and rejected concatenated in one forward",
    }
