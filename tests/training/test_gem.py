"""GEM (training/gem.py): its gradient is softmax(z / beta) - onehot, beta = 1 is cross-entropy, masked positions
get none; trained on samples of a fixed categorical distribution it ends flatter than cross-entropy, at the
predicted fixed point p ~ pi^beta. Stage 2 and the AR baseline train with it through the real Lightning loop,
report cross-entropy and the entropy of their distributions, and refuse to resume under another loss;
pretrain_pair passes the loss on and shares one stage-1 run between the losses."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bwarea import ARConfig, ARLanguageModel
from tests.training.test_pretrain import config, rows_with
from training.experiment import PretrainBudget, pretrain_pair
from training.gem import (SupervisedLossError, check_resumed_loss, cross_entropy_loss, gem_loss, loss_settings,
                          supervised_loss)
from training.pretrain import ARBaseline, _Totals, run


def logits_grad(loss_fn, logits: torch.Tensor) -> torch.Tensor:
    logits = logits.clone().requires_grad_(True)
    loss_fn(logits).backward()
    return logits.grad


@pytest.mark.parametrize("beta", [0.3, 0.7, 1.0, 2.5])
def test_gem_gradient_is_tempered_softmax_minus_onehot_per_row(beta):
    generator = torch.Generator().manual_seed(int(beta * 10))
    logits, targets = 3 * torch.randn(6, 10, generator=generator), torch.randint(0, 10, (6,), generator=generator)
    expected = ((logits / beta).softmax(-1) - F.one_hot(targets, 10)) / 6
    assert torch.allclose(logits_grad(lambda z: gem_loss(z, targets, beta), logits), expected, atol=1e-6)


def test_beta_one_has_cross_entropys_gradient_and_its_value_minus_the_entropy():
    generator = torch.Generator().manual_seed(1)
    logits, targets = 2 * torch.randn(2, 5, 12, generator=generator), torch.randint(0, 12, (2, 5), generator=generator)
    ce_grad = logits_grad(lambda z: F.cross_entropy(z.flatten(0, 1), targets.flatten()), logits)
    assert torch.allclose(logits_grad(lambda z: gem_loss(z, targets, beta=1.0), logits), ce_grad, atol=1e-6)
    log_p = logits.log_softmax(-1)
    entropy = -(log_p.exp() * log_p).sum(-1).mean()
    assert float(gem_loss(logits, targets, beta=1.0)) == pytest.approx(float(cross_entropy_loss(logits, targets) - entropy), abs=1e-5)
    assert float(gem_loss(logits, targets, beta=0.7)) != pytest.approx(float(gem_loss(logits, targets, beta=1.0)), abs=1e-3)


def test_masked_positions_get_no_gradient_and_the_mean_is_over_real_positions():
    generator = torch.Generator().manual_seed(2)
    logits, targets = torch.randn(8, 6, generator=generator), torch.randint(0, 6, (8,), generator=generator)
    mask = torch.tensor([True, False, True, True, False, False, True, True])
    for name, options in (("gem", {"beta": 0.7}), ("cross_entropy", {})):
        grad = logits_grad(lambda z: supervised_loss(name, z, targets, mask, **options), logits)
        assert grad[~mask].abs().max() == 0
        subset = logits_grad(lambda z: supervised_loss(name, z, targets[mask], **options), logits[mask])
        assert torch.allclose(grad[mask], subset, atol=1e-7)  # both divided by the 5 real positions
    expected = ((logits[mask] / 0.7).softmax(-1) - F.one_hot(targets[mask], 6)) / 5
    assert torch.allclose(logits_grad(lambda z: gem_loss(z, targets, 0.7, mask), logits)[mask], expected, atol=1e-6)


def test_gem_computes_in_fp32_from_low_precision_logits():
    logits, targets = torch.randn(4, 64).bfloat16(), torch.arange(4)
    loss = gem_loss(logits, targets)
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(float(gem_loss(logits.float(), targets)), abs=1e-6)


def test_bad_settings_are_refused_with_the_valid_choices():
    logits, targets = torch.randn(3, 4), torch.arange(3)
    for beta in (0.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match=r"beta \(gem_beta\) must be positive"):
            gem_loss(logits, targets, beta)
    with pytest.raises(ValueError, match="'focal'.*cross_entropy, gem"):
        supervised_loss("focal", logits, targets)
    assert torch.equal(supervised_loss("cross_entropy", logits, targets), F.cross_entropy(logits, targets))


def entropy(probabilities: torch.Tensor) -> float:
    return float(-(probabilities * probabilities.log()).sum())


def test_trained_on_a_fixed_distribution_gem_ends_flatter_than_cross_entropy_at_p_proportional_to_pi_to_the_beta():
    """Free logits fitted to 5,000 samples of a skewed 8-way distribution: cross-entropy recovers the samples'
    frequencies, GEM their beta-th power renormalised, which has ~0.2 nats more entropy here."""
    generator = torch.Generator().manual_seed(0)
    pi = torch.softmax(-0.6 * torch.arange(8.0), 0)
    targets = torch.multinomial(pi, 5_000, replacement=True, generator=generator)
    frequencies = torch.bincount(targets, minlength=8).float() / targets.numel()
    fitted = {}
    for name, options in (("cross_entropy", {}), ("gem", {"beta": 0.7})):
        logits = torch.zeros(8, requires_grad=True)
        optimizer = torch.optim.Adam([logits], lr=0.1)
        for _ in range(200):
            optimizer.zero_grad()
            supervised_loss(name, logits.expand(targets.numel(), 8), targets, **options).backward()
            optimizer.step()
        fitted[name] = logits.detach().softmax(-1)
    tempered = frequencies ** 0.7 / (frequencies ** 0.7).sum()
    assert torch.allclose(fitted["cross_entropy"], frequencies, atol=2e-3)
    assert torch.allclose(fitted["gem"], tempered, atol=2e-3)
    assert entropy(fitted["gem"]) > entropy(fitted["cross_entropy"]) + 0.15
    assert entropy(fitted["gem"]) == pytest.approx(entropy(tempered), abs=5e-3)


def test_a_resume_under_another_loss_is_refused():
    gem, ce = loss_settings("gem", 0.7), loss_settings("cross_entropy", 0.7)
    check_resumed_loss(None, ce, "old.ckpt")  # checkpoints from before the option trained with cross-entropy
    check_resumed_loss(gem, loss_settings("gem", 0.7), "run.ckpt")
    with pytest.raises(SupervisedLossError, match=r"run.ckpt was trained with loss gem \(beta 0.7\), but this run asks "
                                                  r"for cross_entropy; resume it with model.loss: gem and model.gem_beta: 0.7"):
        check_resumed_loss(gem, ce, "run.ckpt")
    with pytest.raises(SupervisedLossError, match=r"gem \(beta 0.5\)"):
        check_resumed_loss(gem, loss_settings("gem", 0.5), "run.ckpt")
    with pytest.raises(SupervisedLossError, match=r"beta \(gem_beta\) must be positive"):
        ARBaseline(loss="gem", gem_beta=0)


def test_ar_validation_reports_the_fused_cross_entropy_and_the_next_token_entropy():
    torch.manual_seed(0)
    module = ARBaseline(loss="gem")
    module.model = ARLanguageModel(ARConfig(vocab_size=96, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                            intermediate_size=64))
    batch = torch.randint(0, 96, (3, 17))
    module._totals = _Totals(module.validation_totals(), torch.device("cpu"))
    with torch.no_grad():
        module.validation_step(batch, 0)
        metrics = module.validation_metrics(module._totals.sums)
        log_p = module.model(batch[:, :-1]).log_softmax(-1)
        assert float(metrics["val/loss"]) == pytest.approx(float(module.model.loss(batch)), abs=1e-5)
    assert float(metrics["val/token_entropy"]) == pytest.approx(float(-(log_p.exp() * log_p).sum(-1).mean()), abs=1e-5)
    assert 0 < float(metrics["val/token_entropy"]) < math.log(96)


# ----------------------------------------------------------------------------------------------
# Through the Lightning loop

WORDS = ["north", "south", "east", "west", "key", "door", "chest", "coin", "lamp", "table", "kitchen", "cellar"]


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    """Forty short documents of game-like text (seeded), enough for a 512-token tokenizer and a few 64-token blocks."""
    directory = tmp_path_factory.mktemp("gem-corpus")
    rng = random.Random(0)
    for index in range(40):
        lines = [f"> go {rng.choice(WORDS[:4])}\nYou are in the {rng.choice(WORDS[10:])}. You see a {rng.choice(WORDS[4:10])}."
                 for _ in range(12)]
        (directory / f"doc-{index:02d}.txt").write_text("\n".join(lines) + "\n")
    return directory


def short(settings: dict, steps: int, name: str) -> dict:
    settings["run"]["name"] = name
    settings["trainer"].update(max_steps=steps, val_check_interval=steps)
    settings["run"]["checkpoint_every_n_steps"] = steps
    return settings


@pytest.mark.slow
def test_policy_and_ar_train_with_gem_log_entropies_and_refuse_to_resume_under_cross_entropy(tiny_corpus, tmp_path):
    world = run(short(config(tiny_corpus, tmp_path), 6, "world"))
    policy_settings = short(config(tiny_corpus, tmp_path, "PolicyStage", stage1=str(world / "export"), loss="gem",
                                   gem_beta=0.5, diagnostic_batches=0), 6, "policy-gem")
    policy = run(policy_settings)
    last = rows_with(policy, "val/action_entropy")[-1]
    assert 0 < last["val/action_entropy"] <= math.log(64) and last["val/loss"] > 0 and 0 <= last["val/bc_top1"] <= 1
    assert 0 < rows_with(policy, "train/action_entropy")[-1]["train/action_entropy"] <= math.log(64)

    ar = run(short(config(tiny_corpus, tmp_path, "ARBaseline", loss="gem"), 6, "ar-gem"))
    last = rows_with(ar, "val/token_entropy")[-1]
    assert last["val/perplexity"] == pytest.approx(math.exp(last["val/loss"]), rel=1e-4)
    assert 0 < last["val/token_entropy"] <= math.log(512)
    assert rows_with(ar, "train/perplexity")[-1]["train/perplexity"] > 1

    policy_settings["model"]["init_args"]["loss"] = "cross_entropy"
    with pytest.raises(SupervisedLossError, match=r"was trained with loss gem \(beta 0.5\), but this run asks for cross_entropy"):
        run({**policy_settings, "ckpt_path": "last"})



def test_pretrain_pair_passes_the_loss_to_stage_2_and_the_ar_baseline_and_shares_stage_1(tmp_path, monkeypatch):
    """Stage 1 is the same run whatever the loss (its plan does not name it); stage 2 and the AR baseline get the
    loss in their options and plans; a cross-entropy budget records plans without it, as before the option."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "manifest.json").write_text("{}")
    launched: dict[str, dict] = {}

    def fake_run(settings: dict) -> Path:
        run_dir = Path(settings["run"]["root"]) / settings["run"]["name"]
        launched[settings["run"]["name"]] = settings["model"]["init_args"]
        (run_dir / "export").mkdir(parents=True)
        (run_dir / "export" / "training_info.json").write_text("{}")
        return run_dir

    monkeypatch.setattr("training.pretrain.run", fake_run)
    pretrain_pair(corpus, tmp_path / "ce", PretrainBudget())
    assert {name: "loss" in init_args for name, init_args in launched.items()} == {"world": False, "policy": True, "ar": True}
    assert launched["policy"]["loss"] == "cross_entropy"
    plans = {name: json.loads((tmp_path / "ce" / name / "plan.json").read_text()) for name in launched}
    assert not any("loss" in plan or "gem_beta" in plan for plan in plans.values())

    launched.clear()
    (tmp_path / "gem").mkdir()
    (tmp_path / "gem" / "world").symlink_to(tmp_path / "ce" / "world")  # stage 1 reused: its plan must match
    pretrain_pair(corpus, tmp_path / "gem", PretrainBudget(loss="gem", gem_beta=0.5))
    assert sorted(launched) == ["ar", "policy"]
    for name in ("policy", "ar"):
        assert (launched[name]["loss"], launched[name]["gem_beta"]) == ("gem", 0.5)
        plan = json.loads((tmp_path / "gem" / name / "plan.json").read_text())
        assert (plan["loss"], plan["gem_beta"]) == ("gem", 0.5)
