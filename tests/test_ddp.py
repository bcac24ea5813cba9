"""Two-process DDP pretraining on CPU (gloo): ranks train on disjoint windows, with segment checkpointing on.

The test runs this file as a script in a subprocess; Lightning's ``ddp`` launcher starts the second rank by
running the same command again, which a pytest process could not do.
"""

import json
import subprocess
import sys
from pathlib import Path

import torch

from dna_mamba.tokenizer import N


def canonical(window: torch.Tensor) -> str:
    """The window or its reverse complement, whichever is smaller: training draws either strand."""
    complement = torch.where(window < N, 3 - window, window).flip(-1)
    return min(",".join(map(str, window.tolist())), ",".join(map(str, complement.tolist())))


def main(out_dir: Path) -> None:
    import lightning as L

    from dna_mamba.lit.datamodule import GenomeDataConfig, GenomeDataModule
    from dna_mamba.lit.pretrain import PretrainModule
    from dna_mamba.model import DnaMambaConfig

    class WindowRecorder(L.Callback):
        def __init__(self):
            self.windows: list[str] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.windows += [canonical(row) for row in batch.cpu()]

        def on_train_end(self, trainer, pl_module) -> None:
            sampler = trainer.train_dataloader.sampler
            (out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(
                {"windows": self.windows, "world_size": trainer.world_size, "global_step": trainer.global_step,
                 "sampler": [type(sampler).__name__, sampler.num_replicas, sampler.rank],
                 "weights": [p.detach().double().sum().item() for p in pl_module.parameters()]}
            ))

    L.seed_everything(0, verbose=False)
    data = GenomeDataModule(GenomeDataConfig(cache_dir=str(out_dir / "stores"), max_val_windows=2), seq_len=256,
                            batch_size=2, progress=False)
    # segment_len 100 < 256: the segmented loss's Function must hand DDP one gradient per parameter per step.
    module = PretrainModule(DnaMambaConfig(d_model=16, n_layer=2, d_state=4), segment_len=100)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=2, limit_val_batches=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[WindowRecorder()])
    trainer.fit(module, datamodule=data)


def test_two_process_ddp_on_cpu(tmp_path):
    result = subprocess.run([sys.executable, __file__, str(tmp_path)], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank in ranks:
        assert rank["world_size"] == 2 and rank["global_step"] == 2
        assert rank["sampler"][:2] == ["ResumableSampler", 2] and len(rank["windows"]) == 4
    assert [rank["sampler"][2] for rank in ranks] == [0, 1]
    assert not set(ranks[0]["windows"]) & set(ranks[1]["windows"])  # disjoint shards of the training windows
    # Different data, same weights: gradients were all-reduced (the segmented loss works with DDP's hooks).
    assert ranks[0]["weights"] == ranks[1]["weights"]


if __name__ == "__main__":
    main(Path(sys.argv[1]))


def test_gradient_clipping_under_fsdp_uses_the_sharded_models_norm(monkeypatch):
    """Lightning's FSDP precision plugin refuses clipping by norm; the modules clip through FSDP's clip_grad_norm_
    instead, and leave every other strategy to Lightning."""
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from dna_mamba.lit.pretrain import PretrainModule
    from dna_mamba.lit.species import SpeciesModule
    from dna_mamba.model import DnaMambaConfig

    calls = []

    class ShardedModel:
        def clip_grad_norm_(self, max_norm):
            calls.append(("fsdp", max_norm))

    for module_cls in (PretrainModule, SpeciesModule):
        for strategy, expected in ((FSDPStrategy(), ("fsdp", 0.5)), (DDPStrategy(), ("lightning", 0.5, "norm"))):
            calls.clear()
            monkeypatch.setattr(type(strategy), "model", property(lambda self: ShardedModel()), raising=False)
            trainer = type("Trainer", (), {"strategy": strategy})()
            monkeypatch.setattr(module_cls, "trainer", property(lambda self, t=trainer: t))
            monkeypatch.setattr(module_cls, "clip_gradients",
                                lambda self, opt, val, algo: calls.append(("lightning", val, algo)))
            kwargs = {"classes": ["a", "b"]} if module_cls is SpeciesModule else {}
            module = module_cls(DnaMambaConfig(d_model=8, n_layer=1, d_state=2), **kwargs)
            module.configure_gradient_clipping(None, 0.5, "norm")
            assert calls == [expected], (module_cls.__name__, calls)
